//! A MariaDB server dbfork does not manage (the operator's own, e.g. Debian's
//! `mariadb` service): reached over its Unix socket as root (unix_socket
//! authentication, as Debian sets it up) or with the login of an operator's
//! `--defaults-file`. What `dbfork source adopt` must know of it before it changes
//! anything, the replication account it makes there, and the streamed copy of its data
//! (mariadb-backup).

mod backup_stream;
mod process;

pub use backup_stream::BackupStream;
pub use process::{parse_printed_options, ServerProcess};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    login: Login,
}

/// Who dbfork logs in as: root over the socket (no password: unix_socket), or what an
/// operator's option file says.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub user: Option<String>,
    pub password: Option<String>,
    /// The option file the login came from (mariadb-backup reads it itself, so the
    /// password never shows on a command line).
    pub defaults_file: Option<PathBuf>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(elided)"))
            .field("defaults_file", &self.defaults_file)
            .finish()
    }
}

impl Login {
    /// The login a client's option groups of `path` give (`[client]`, `[mariadb-backup]`
    /// ...), and the socket they name.
    pub fn from_defaults_file(path: &Path) -> Result<(Login, Option<PathBuf>)> {
        use crate::option_file::{OptionFile, CLIENT_GROUPS};
        let file = OptionFile::read(path)?;
        let get = |k: &str| file.get(&CLIENT_GROUPS, k).map(str::to_string);
        let (user, password) = (get("user"), get("password"));
        if user.is_none() && password.is_none() && !file.includes.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "{} sets no user or password in [client] and includes other files ({}), \
                 which dbfork does not read: put the login in [client] of the file given",
                path.display(),
                file.includes.join(", ")
            )));
        }
        let login = Login {
            user,
            password,
            defaults_file: Some(path.to_path_buf()),
        };
        Ok((login, get("socket").map(PathBuf::from)))
    }

    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("root")
    }
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
    /// `skip_networking`: no TCP, so no replica can connect.
    pub skip_networking: bool,
    /// `@@bind_address` (empty: all addresses).
    pub bind_address: String,
    /// The user the session logged in as (`CURRENT_USER()`, `user@host`).
    pub session_user: String,
    /// `@@innodb_page_size`.
    pub page_size: u64,
    /// `@@innodb_buffer_pool_size`, `@@gtid_domain_id`.
    pub buffer_pool_size: u64,
    pub gtid_domain_id: u32,
    /// `@@pid_file`, `@@socket`, `@@log_bin_basename` (where its binary log files are).
    pub pid_file: PathBuf,
    pub socket: PathBuf,
    pub log_bin_basename: Option<PathBuf>,
    /// Where InnoDB keeps files it may keep outside the datadir
    /// (`innodb_data_home_dir`, `innodb_log_group_home_dir`, `innodb_undo_directory`;
    /// empty or relative: inside it).
    pub innodb_dirs: Vec<(String, String)>,
    /// Whether it replicates from another server itself, and that server's id.
    pub replicates_from: Option<u32>,
    /// server_ids of the replicas connected to it (`SHOW SLAVE HOSTS`; empty when the
    /// session may not ask).
    pub replica_ids: Vec<u32>,
    /// Whether `root@localhost` logs in by unix_socket (a copy of the server's user
    /// table is managed by dbfork as root over its socket); `None` when the session
    /// may not read mysql.global_priv.
    pub root_by_socket: Option<bool>,
    /// `@@lower_case_table_names`, `@@gtid_strict_mode`: what its copies must run with
    /// (`backup::INHERITED`).
    pub lower_case_table_names: u32,
    pub gtid_strict_mode: bool,
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

    /// The `backup::INHERITED` settings as this server runs them, as server options.
    pub fn inherited_options(&self) -> BTreeMap<String, String> {
        let strict = if self.gtid_strict_mode { "ON" } else { "OFF" };
        [
            (
                "lower_case_table_names",
                self.lower_case_table_names.to_string(),
            ),
            ("gtid_strict_mode", strict.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl ExternalServer {
    /// The server at `socket`, logged into as root (unix_socket).
    pub fn new(socket: &Path) -> ExternalServer {
        Self::with_login(socket, Login::default())
    }

    pub fn with_login(socket: &Path, login: Login) -> ExternalServer {
        ExternalServer {
            socket: socket.to_path_buf(),
            login,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn login(&self) -> &Login {
        &self.login
    }

    fn name(&self) -> String {
        format!("the server at {}", self.socket.display())
    }

    /// A session over the socket with the server's login.
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
            .user(Some(self.login.user()))
            .pass(self.login.password.clone())
            .prefer_socket(true)
            .read_timeout(Some(IO_TIMEOUT))
            .write_timeout(Some(IO_TIMEOUT));
        let how = match &self.login.defaults_file {
            Some(f) => format!(
                "connect as {} (from {}) over its socket",
                self.login.user(),
                f.display()
            ),
            None => "connect as root over its socket (no root login by unix_socket there? \
                     give --defaults-file with a [client] user and password)"
                .into(),
        };
        Conn::new(opts).map_err(|e| read_error(&self.name(), &how, e))
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
        let row: Option<(i64, Option<String>, String, u64)> = c
            .query_first(
                "SELECT @@skip_networking, @@bind_address, CURRENT_USER(), @@innodb_page_size",
            )
            .map_err(|e| read_error(&name, "reading its network settings", e))?;
        let (skip_networking, bind_address, session_user, page_size) = row.unwrap_or_default();
        let row: Option<(u64, u32, String, String, Option<String>)> = c
            .query_first(
                "SELECT @@innodb_buffer_pool_size, @@gtid_domain_id, @@pid_file, @@socket, \
                 @@log_bin_basename",
            )
            .map_err(|e| read_error(&name, "reading its files", e))?;
        let (buffer_pool_size, gtid_domain_id, pid_file, socket, log_bin_basename) =
            row.unwrap_or_default();
        let row: Option<(Option<String>, Option<String>, Option<String>)> = c
            .query_first(
                "SELECT @@innodb_data_home_dir, @@innodb_log_group_home_dir, \
                 @@innodb_undo_directory",
            )
            .map_err(|e| read_error(&name, "reading its InnoDB directories", e))?;
        let (data_home, log_home, undo) = row.unwrap_or_default();
        let innodb_dirs = [
            ("innodb_data_home_dir", data_home),
            ("innodb_log_group_home_dir", log_home),
            ("innodb_undo_directory", undo),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.unwrap_or_default()))
        .collect();
        // Both need privileges an adoption's session may lack: then not known.
        let replicates_from = c
            .query_first::<mysql::Row, _>("SHOW SLAVE STATUS")
            .ok()
            .flatten()
            .map(|r| {
                r.get_opt::<u32, _>("Master_Server_Id")
                    .and_then(|v| v.ok())
                    .unwrap_or(0)
            });
        let replica_ids: Vec<u32> = c
            .query::<mysql::Row, _>("SHOW SLAVE HOSTS")
            .map(|rows| {
                rows.into_iter()
                    .filter_map(|r| r.get_opt::<u32, _>("Server_id").and_then(|v| v.ok()))
                    .collect()
            })
            .unwrap_or_default();
        // Readable only with SELECT on mysql.*; a session without it cannot tell, and
        // the copy's root is then taken to log in as this one does.
        let row: Option<(u32, i64)> = c
            .query_first("SELECT @@lower_case_table_names, @@gtid_strict_mode")
            .map_err(|e| read_error(&name, "reading its table name and GTID settings", e))?;
        let (lower_case_table_names, gtid_strict_mode) = row.unwrap_or_default();
        let root_auth: Option<String> = c
            .query_first(
                "SELECT Priv FROM mysql.global_priv WHERE User = 'root' AND Host = 'localhost'",
            )
            .ok()
            .flatten();
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
            skip_networking: skip_networking == 1,
            bind_address: bind_address.unwrap_or_default(),
            session_user,
            page_size,
            buffer_pool_size,
            gtid_domain_id,
            pid_file: PathBuf::from(pid_file),
            socket: PathBuf::from(socket),
            log_bin_basename: log_bin_basename.map(PathBuf::from),
            innodb_dirs,
            replicates_from,
            replica_ids,
            root_by_socket: root_auth.map(|p| p.contains("unix_socket")),
            lower_case_table_names,
            gtid_strict_mode: gtid_strict_mode == 1,
        })
    }

    /// `@@gtid_binlog_pos`: where the server's binary log is.
    pub fn gtid_binlog_pos(&self) -> Result<crate::GtidPos> {
        crate::sql::gtid_var(&mut self.conn()?, &self.name(), "gtid_binlog_pos")
    }

    /// Whether an account `user`@`host` exists; `None` when the session may not read
    /// mysql.user (then CREATE USER says so, if it does).
    pub fn user_exists(&self, user: &str, host: &str) -> Result<Option<bool>> {
        let n: Option<Option<u64>> = self
            .conn()?
            .exec_first(
                "SELECT COUNT(*) FROM mysql.user WHERE User = ? AND Host = ?",
                (user, host),
            )
            .ok();
        Ok(n.map(|n| n.unwrap_or(0) > 0))
    }

    /// Makes the account a replica of the server logs in with: `REPLICATION SLAVE`
    /// (reading the binary log) and nothing else (dbfork's own replicas of the copy log
    /// in with it too: the copy carries it).
    pub fn create_replication_account(&self, user: &str, host: &str, password: &str) -> Result<()> {
        use crate::sql::{exec, quote};
        let name = self.name();
        let mut c = self.conn()?;
        let account = format!("{}@{}", quote(user), quote(host));
        c.query_drop(format!(
            "CREATE USER {account} IDENTIFIED BY {}",
            quote(password)
        ))
        .map_err(|e| Error::sql(&name, format!("CREATE USER {account} (password elided)"), e))?;
        exec(
            &mut c,
            &name,
            &format!("GRANT REPLICATION SLAVE ON *.* TO {account}"),
        )
    }

    /// Drops the account (a failed adoption's); no error when it is gone.
    pub fn drop_user(&self, user: &str, host: &str) -> Result<()> {
        use crate::sql::{exec, quote};
        let name = self.name();
        let mut c = self.conn()?;
        exec(
            &mut c,
            &name,
            &format!("DROP USER IF EXISTS {}@{}", quote(user), quote(host)),
        )
    }

    /// Starts mariadb-backup streaming a consistent copy of the server's data
    /// (xbstream) on its stdout; its log goes to `log`. Its copy starts once no session
    /// of the server holds LOCK TABLES: it gives up after `lock_wait` (at least 1 s)
    /// rather than wait for ever, mariadb-backup's default.
    pub fn backup_stream(
        &self,
        datadir: &Path,
        log: &Path,
        lock_wait: Duration,
    ) -> Result<BackupStream> {
        let mut cmd = Command::new("mariadb-backup");
        // An option file goes first or not at all; without one, none of the host's
        // is read (the server's own settings are asked over the connection).
        match &self.login.defaults_file {
            Some(f) => cmd.arg(format!("--defaults-file={}", f.display())),
            None => cmd.arg("--no-defaults").arg("--user=root"),
        };
        cmd.arg("--backup")
            .arg("--stream=xbstream")
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--datadir={}", datadir.display()));
        // 0 would be mariadb-backup's "for ever".
        let lock_wait = Duration::from_secs(lock_wait.as_secs().max(1));
        cmd.arg(format!("--startup-wait-timeout={}", lock_wait.as_secs()));
        BackupStream::spawn(cmd, log, lock_wait)
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
