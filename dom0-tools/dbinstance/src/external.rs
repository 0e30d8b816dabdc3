//! A MariaDB server dbfork does not manage (the operator's own, e.g. Debian's
//! `mariadb` service): reached as root over its Unix socket (unix_socket
//! authentication, as Debian sets it up), read only. What `dbfork source adopt` must
//! know of it before it changes anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};

use crate::error::{Error, Result};
use crate::sql::read_error;

/// How long one read of an operator's server may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The operator's server, by its socket.
#[derive(Debug, Clone)]
pub struct ExternalServer {
    socket: PathBuf,
}

/// What the preflight of an adoption reads from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `@@version`, e.g. `10.11.6-MariaDB-0+deb12u1-log`.
    pub version: String,
    /// `@@version_comment` (names MySQL or MariaDB).
    pub version_comment: String,
    pub log_bin: bool,
    pub server_id: u32,
    pub port: u16,
    pub datadir: PathBuf,
    pub innodb_use_native_aio: bool,
    /// What `SHOW GRANTS` says of the session's user.
    pub grants: Vec<String>,
    /// The bytes its InnoDB tables and indexes take (what a copy of its data takes,
    /// without its logs).
    pub data_bytes: u64,
}

impl ServerFacts {
    /// The privileges `SHOW GRANTS` gives on `*.*` (upper case), and whether with GRANT
    /// OPTION.
    pub fn global_privileges(&self) -> (Vec<String>, bool) {
        global_privileges(&self.grants)
    }

    /// Whether the server is MariaDB (MySQL says so in neither string).
    pub fn is_mariadb(&self) -> bool {
        self.version.contains("MariaDB") || self.version_comment.contains("MariaDB")
    }
}

impl ExternalServer {
    pub fn new(socket: &Path) -> ExternalServer {
        ExternalServer {
            socket: socket.to_path_buf(),
        }
    }

    fn name(&self) -> String {
        format!("the server at {}", self.socket.display())
    }

    /// A root session over the socket.
    pub fn conn(&self) -> Result<Conn> {
        if !self.socket.exists() {
            return Err(Error::InvalidConfig(format!(
                "no server socket at {}: give the socket your server listens on \
                 (SHOW VARIABLES LIKE 'socket'; Debian's is /run/mysqld/mysqld.sock)",
                self.socket.display()
            )));
        }
        let opts = OptsBuilder::new()
            .socket(Some(self.socket.to_string_lossy().into_owned()))
            .user(Some("root"))
            .prefer_socket(true)
            .read_timeout(Some(IO_TIMEOUT))
            .write_timeout(Some(IO_TIMEOUT));
        Conn::new(opts).map_err(|e| read_error(&self.name(), "connect as root over its socket", e))
    }

    /// Reads what an adoption's preflight needs.
    pub fn facts(&self) -> Result<ServerFacts> {
        let name = self.name();
        let mut c = self.conn()?;
        let row: Option<(String, String, i64, i64, i64, String, i64)> = c
            .query_first(
                "SELECT @@version, @@version_comment, @@log_bin, @@server_id, @@port, \
                 @@datadir, @@innodb_use_native_aio",
            )
            .map_err(|e| read_error(&name, "reading its settings", e))?;
        let Some((version, version_comment, log_bin, server_id, port, datadir, aio)) = row else {
            return Err(Error::InvalidConfig(format!("{name} returned no settings")));
        };
        let grants: Vec<String> = c
            .query("SHOW GRANTS")
            .map_err(|e| read_error(&name, "reading its grants", e))?;
        let data_bytes: Option<u64> = c
            .query_first(
                "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS UNSIGNED) \
                 FROM information_schema.TABLES WHERE engine = 'InnoDB'",
            )
            .map_err(|e| read_error(&name, "reading its data size", e))?;
        Ok(ServerFacts {
            version,
            version_comment,
            log_bin: log_bin == 1,
            server_id: u32::try_from(server_id).unwrap_or(0),
            port: u16::try_from(port).unwrap_or(0),
            datadir: PathBuf::from(datadir),
            innodb_use_native_aio: aio == 1,
            grants,
            data_bytes: data_bytes.unwrap_or(0),
        })
    }
}

/// The privileges `SHOW GRANTS` lines give on `*.*` (upper case), and whether with
/// GRANT OPTION; lines it does not understand give none.
pub fn global_privileges(grants: &[String]) -> (Vec<String>, bool) {
    let mut privs = Vec::new();
    let mut grant_option = false;
    for g in grants {
        let Some(rest) = g.strip_prefix("GRANT ") else {
            continue;
        };
        let Some((list, target)) = rest.split_once(" ON ") else {
            continue;
        };
        if !target.starts_with("*.*") {
            continue;
        }
        grant_option |= target.contains("WITH GRANT OPTION");
        privs.extend(list.split(',').map(|p| p.trim().to_ascii_uppercase()));
    }
    (privs, grant_option)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_grants_count() {
        let (p, opt) = global_privileges(&[
            "GRANT RELOAD, process ON *.* TO `ops`@`localhost` WITH GRANT OPTION".into(),
            "GRANT ALL PRIVILEGES ON `app`.* TO `ops`@`localhost`".into(),
            "GRANT PROXY ON ''@'%' TO 'root'@'localhost'".into(),
            "garbage".into(),
        ]);
        assert_eq!(p, vec!["RELOAD".to_string(), "PROCESS".to_string()]);
        assert!(opt);
        assert_eq!(global_privileges(&[]), (vec![], false));
    }
}
