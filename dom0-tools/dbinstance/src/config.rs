//! What an instance is (paths, identity, settings) and the my.cnf it renders to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Everything needed to init, start and reach one MariaDB server.
///
/// `run_dir` holds the generated `my.cnf`, the socket, the pid file, the logs and the
/// replication secret; `datadir` may live elsewhere (for example on a mounted volume),
/// so a clone of the datadir never carries another instance's runtime files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceConfig {
    pub name: String,
    pub datadir: PathBuf,
    pub run_dir: PathBuf,
    pub port: u16,
    pub bind_address: String,
    /// Must be unique among a source and all of its replicas, or replication silently
    /// skips events that look like the replica's own.
    pub server_id: u32,
    pub gtid_domain_id: u32,
    pub buffer_pool_size: u64,
    /// log_bin + binlog_format=ROW + log_slave_updates + gtid_strict_mode.
    pub binlog: bool,
    pub read_only: bool,
    /// Additional server options; a key here replaces a generated one of the same name
    /// (`-` and `_` are treated alike). An empty value renders a bare flag.
    pub extra: BTreeMap<String, String>,
    pub mariadbd: PathBuf,
}

impl InstanceConfig {
    /// A config with the conventional layout: `dir/data` is the datadir, `dir` the
    /// run dir. Binlog on, read_only off, a 64 MiB buffer pool.
    pub fn in_dir(name: &str, dir: &Path, port: u16, server_id: u32) -> Self {
        InstanceConfig {
            name: name.to_string(),
            datadir: dir.join("data"),
            run_dir: dir.to_path_buf(),
            port,
            bind_address: "127.0.0.1".to_string(),
            server_id,
            gtid_domain_id: 0,
            buffer_pool_size: 64 << 20,
            binlog: true,
            read_only: false,
            extra: BTreeMap::new(),
            mariadbd: PathBuf::from("/usr/sbin/mariadbd"),
        }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("mysqld.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("mysqld.pid")
    }

    pub fn error_log(&self) -> PathBuf {
        self.run_dir.join("error.log")
    }

    /// Where the server's stdout/stderr go (early failures land here, not in error.log).
    pub fn stdout_log(&self) -> PathBuf {
        self.run_dir.join("mysqld.out")
    }

    /// The server's private tmpdir: concurrent servers sharing /tmp trip over each
    /// other's temporary tables during bootstrap.
    pub fn tmp_dir(&self) -> PathBuf {
        self.run_dir.join("tmp")
    }

    pub fn cnf_path(&self) -> PathBuf {
        self.run_dir.join("my.cnf")
    }

    /// The replication user's password, mode 0600.
    pub fn repl_secret_path(&self) -> PathBuf {
        self.run_dir.join("repl.secret")
    }

    /// Rejects configs that would render a broken or ambiguous my.cnf.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad(format!(
                "name {:?} must be non-empty [A-Za-z0-9._-]",
                self.name
            ));
        }
        if self.port == 0 {
            return bad("port 0 is not a fixed port; pick one (free_port() helps)".into());
        }
        if self.server_id == 0 {
            return bad("server_id 0 disables replication; use 1 or more".into());
        }
        if self.buffer_pool_size < (5 << 20) {
            return bad(format!(
                "buffer_pool_size {} is below MariaDB's 5 MiB minimum",
                self.buffer_pool_size
            ));
        }
        for p in [&self.datadir, &self.run_dir] {
            if !p.is_absolute() {
                return bad(format!("{} must be an absolute path", p.display()));
            }
            if has_line_break(&p.to_string_lossy()) {
                return bad(format!("path {:?} contains a line break", p));
            }
        }
        let sock = self.socket_path();
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return bad(format!(
                "socket path {} is {} bytes, over the {MAX_SOCKET_PATH}-byte Unix socket limit; use a shorter run_dir",
                sock.display(),
                sock.as_os_str().len()
            ));
        }
        for (k, v) in &self.extra {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return bad(format!(
                    "extra option name {k:?} is not a server option name"
                ));
            }
            if has_line_break(v) {
                return bad(format!("extra option {k} has a line break in its value"));
            }
        }
        Ok(())
    }

    /// The server options in render order, `extra` merged over the generated ones.
    pub fn options(&self) -> Vec<(String, String)> {
        let mut opts: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| opts.push((k.to_string(), v));
        // mariadbd refuses to run as root unless told to; tests and the CLI run as root.
        set("user", "root".into());
        set("datadir", self.datadir.display().to_string());
        set("socket", self.socket_path().display().to_string());
        set("port", self.port.to_string());
        set("bind_address", self.bind_address.clone());
        set("pid_file", self.pid_file().display().to_string());
        set("log_error", self.error_log().display().to_string());
        set("tmpdir", self.tmp_dir().display().to_string());
        set("server_id", self.server_id.to_string());
        set("gtid_domain_id", self.gtid_domain_id.to_string());
        set("innodb_buffer_pool_size", self.buffer_pool_size.to_string());
        // The guest agent sees reads through the C library, not io_uring/libaio ones.
        set("innodb_use_native_aio", "0".into());
        // A cloned datadir may carry a parent's replication config; never act on it
        // before configure_replica has reset it.
        set("skip_slave_start", "ON".into());
        set("relay_log", "relay-bin".into());
        set("skip_name_resolve", "ON".into());
        if self.binlog {
            set("log_bin", "binlog".into());
            set("binlog_format", "ROW".into());
            set("log_slave_updates", "ON".into());
            set("gtid_strict_mode", "ON".into());
        } else {
            set("skip_log_bin", String::new());
        }
        set(
            "read_only",
            if self.read_only { "ON" } else { "OFF" }.into(),
        );

        for (k, v) in &self.extra {
            let norm = normalise(k);
            if let Some(slot) = opts.iter_mut().find(|(ok, _)| normalise(ok) == norm) {
                slot.1 = v.clone();
            } else {
                opts.push((k.clone(), v.clone()));
            }
        }
        opts
    }

    /// The my.cnf text; the server is always started with `--defaults-file` so no
    /// system-wide file can leak settings in.
    pub fn render_cnf(&self) -> String {
        let mut out = format!(
            "# generated by dbinstance for instance {}\n[mariadbd]\n",
            self.name
        );
        for (k, v) in self.options() {
            if v.is_empty() {
                out.push_str(&format!("{k}\n"));
            } else {
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        // mariadb-backup reads its datadir from here when given this file.
        out.push_str(&format!(
            "\n[client]\nsocket={}\n",
            self.socket_path().display()
        ));
        out
    }
}

fn normalise(k: &str) -> String {
    k.replace('-', "_").to_ascii_lowercase()
}

fn has_line_break(s: &str) -> bool {
    s.contains('\n') || s.contains('\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> InstanceConfig {
        InstanceConfig::in_dir("src1", Path::new("/tmp/x"), 13306, 7)
    }

    #[test]
    fn renders_required_settings() {
        let text = cfg().render_cnf();
        for line in [
            "[mariadbd]",
            "datadir=/tmp/x/data",
            "socket=/tmp/x/mysqld.sock",
            "port=13306",
            "server_id=7",
            "innodb_use_native_aio=0",
            "log_bin=binlog",
            "binlog_format=ROW",
            "log_slave_updates=ON",
            "gtid_strict_mode=ON",
            "read_only=OFF",
            "skip_slave_start=ON",
            "innodb_buffer_pool_size=67108864",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn no_binlog_renders_skip_log_bin() {
        let mut c = cfg();
        c.binlog = false;
        let text = c.render_cnf();
        assert!(text.lines().any(|l| l == "skip_log_bin"));
        assert!(!text.contains("log_bin=binlog"));
        assert!(!text.contains("gtid_strict_mode"));
    }

    #[test]
    fn extra_replaces_generated_option_with_dash_or_underscore() {
        let mut c = cfg();
        c.extra.insert("innodb-use-native-aio".into(), "1".into());
        c.extra.insert("innodb_log_file_size".into(), "16M".into());
        let opts = c.options();
        let aio: Vec<_> = opts
            .iter()
            .filter(|(k, _)| normalise(k) == "innodb_use_native_aio")
            .collect();
        assert_eq!(aio.len(), 1);
        assert_eq!(aio[0].1, "1");
        assert!(opts.contains(&("innodb_log_file_size".into(), "16M".into())));
    }

    #[test]
    fn validate_rejects_bad_input() {
        let mut c = cfg();
        c.name = "a b".into();
        assert!(matches!(c.validate(), Err(Error::InvalidConfig(_))));
        let mut c = cfg();
        c.extra.insert("x".into(), "1\nuser=evil".into());
        assert!(matches!(c.validate(), Err(Error::InvalidConfig(_))));
        let mut c = cfg();
        c.run_dir = PathBuf::from(format!("/tmp/{}", "d".repeat(120)));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("Unix socket limit"), "{err}");
        let mut c = cfg();
        c.server_id = 0;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.datadir = PathBuf::from("rel/data");
        assert!(c.validate().is_err());
        assert!(cfg().validate().is_ok());
    }

    #[test]
    fn serde_round_trip() {
        let mut c = cfg();
        c.extra.insert("innodb_log_file_size".into(), "16M".into());
        let json = serde_json::to_string(&c).unwrap();
        let back: InstanceConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
