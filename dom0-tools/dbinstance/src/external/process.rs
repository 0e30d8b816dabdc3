//! The operator's server process as the kernel shows it, and the options it runs with.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The operator's server process, as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProcess {
    pub pid: u32,
    /// Its binary (`/proc/PID/exe`).
    pub exe: PathBuf,
    /// Its arguments, without the program name.
    pub args: Vec<String>,
}

/// Arguments that choose which option files a server reads: they go before any other.
fn is_defaults_arg(a: &str) -> bool {
    a == "--no-defaults"
        || a.starts_with("--defaults-file=")
        || a.starts_with("--defaults-extra-file=")
        || a.starts_with("--defaults-group-suffix=")
}

impl ServerProcess {
    /// The process whose pid `pid_file` holds, if it runs.
    pub fn from_pid_file(pid_file: &Path) -> Result<ServerProcess> {
        let text = std::fs::read_to_string(pid_file).map_err(|e| Error::io(pid_file, e))?;
        let pid: u32 = text.trim().parse().map_err(|_| Error::Parse {
            what: pid_file.display().to_string(),
            detail: format!("not a process id: {:?}", text.trim()),
        })?;
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let exe = std::fs::read_link(proc_dir.join("exe")).map_err(|e| Error::io(&proc_dir, e))?;
        let args = crate::procfs::cmdline(pid)
            .map_err(|e| Error::io(&proc_dir, e))?
            .into_iter()
            .skip(1)
            .collect();
        Ok(ServerProcess { pid, exe, args })
    }

    /// The options it runs with: what its option files say (the binary's own
    /// `--print-defaults`, reading the files its arguments name), then its other
    /// arguments, later ones winning.
    pub fn options(&self) -> Result<Vec<(String, String)>> {
        let (files, rest): (Vec<&String>, Vec<&String>) =
            self.args.iter().partition(|a| is_defaults_arg(a));
        let mut cmd = Command::new(&self.exe);
        cmd.args(files).arg("--print-defaults").stdin(Stdio::null());
        let out = crate::tools::run(
            &mut cmd,
            "mariadbd --print-defaults",
            "mariadb-server",
            None,
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let printed = text
            .lines()
            .find(|l| l.starts_with("--"))
            .unwrap_or_default();
        let mut opts = parse_printed_options(printed);
        let rest: Vec<String> = rest.into_iter().cloned().collect();
        opts.extend(parse_printed_options(&rest.join(" ")));
        Ok(opts)
    }
}

/// `--key=value --flag ...` as `mariadbd --print-defaults` prints them, each as
/// (name with `_` for `-`, value; empty for a flag). A word that does not start with
/// `--` continues the value before it (a value with a space). A short option (`-u
/// mysql`, from a command line) is kept as its letter with its dash (`-u`), so it is
/// not mistaken for a long one.
pub fn parse_printed_options(line: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for word in line.split_whitespace() {
        match word.strip_prefix("--") {
            Some(opt) if !opt.is_empty() => {
                let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
                out.push((k.replace('-', "_"), v.to_string()));
            }
            None if word.len() > 1 && word.starts_with('-') => {
                // The dash and one letter (a char, not a byte: the text is anyone's).
                let cut = word.char_indices().nth(2).map_or(word.len(), |(i, _)| i);
                out.push((word[..cut].to_string(), word[cut..].to_string()));
            }
            _ => {
                if let Some(last) = out.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(word);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_options_are_read_as_the_server_reads_them() {
        let o = parse_printed_options(
            "--user=mysql --pid-file=/run/mysqld/mysqld.pid --skip-name-resolve \
             --init_connect=SET NAMES utf8mb4 --log_bin=/var/log/mysql/mysql-bin.log -- x",
        );
        assert_eq!(
            o,
            vec![
                ("user".into(), "mysql".into()),
                ("pid_file".into(), "/run/mysqld/mysqld.pid".into()),
                ("skip_name_resolve".into(), "".into()),
                ("init_connect".into(), "SET NAMES utf8mb4".into()),
                ("log_bin".into(), "/var/log/mysql/mysql-bin.log -- x".into()),
            ]
        );
        assert_eq!(
            parse_printed_options("--port=1 -u mysql -P3307"),
            vec![
                ("port".into(), "1".into()),
                ("-u".into(), " mysql".into()),
                ("-P".into(), "3307".into()),
            ]
        );
        assert_eq!(parse_printed_options("-é"), vec![("-é".into(), "".into())]);
        assert!(parse_printed_options("").is_empty());
        assert!(parse_printed_options("stray words").is_empty());
    }
}
