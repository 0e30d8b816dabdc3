//! A consistent copy of a server's data made by mariadb-backup, received into a
//! datadir: unpacked from its stream (`mbstream -x`, nothing staged), prepared (its
//! redo applied), and read for what a server started on it needs: the GTID position
//! the copy is at, and the InnoDB settings its files were made with.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::gtid::GtidPos;
use crate::option_file::OptionFile;
use crate::tools::{run, spawn_error, tail_of_file};

/// What a prepared copy says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The copied server's `gtid_binlog_pos` at the copy's consistent point: a replica
    /// of it started on the copy replicates from right after it.
    pub gtid: GtidPos,
    /// Settings a server on the copy must start with (from `backup-my.cnf`): the files'
    /// page size and system tablespace layout.
    pub options: BTreeMap<String, String>,
}

/// The InnoDB settings of `backup-my.cnf` that the copied files were made with and a
/// server on them must share; the others (log size, checksum, compression) are the new
/// server's to choose, and the undo directory is the copy's own (the copy holds the
/// undo tablespaces beside the rest).
pub const CARRIED: [&str; 3] = [
    "innodb_page_size",
    "innodb_data_file_path",
    "innodb_undo_tablespaces",
];

/// Settings the adopted server runs with that change what its data means to a query or
/// to replication, which its base and every fork of it take from it: table names
/// stored in lower case (a base at 0 would look them up case-sensitively), and
/// whether replication refuses GTIDs out of order in a domain (a server writing such
/// a binary log, non-strict, would stop a strict base's replication with error 1950).
pub const INHERITED: [&str; 2] = ["lower_case_table_names", "gtid_strict_mode"];

/// Unpacks the xbstream `stream` into `datadir` (which must be empty), calling
/// `copied` with the bytes received so far as they arrive; `log` gets mbstream's
/// output.
pub fn receive(
    stream: &mut dyn Read,
    datadir: &Path,
    log: &Path,
    copied: &mut dyn FnMut(u64),
) -> Result<u64> {
    crate::instance::prepare_empty_dir(datadir)?;
    let err = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
    let mut child = Command::new("mbstream")
        .arg("-x")
        .arg("-C")
        .arg(datadir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| spawn_error("mbstream", "mariadb-backup", e))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let pumped: std::io::Result<()> = (|| loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stdin.write_all(&buf[..n])?;
        total += n as u64;
        copied(total);
    })();
    drop(stdin);
    let status = child.wait().map_err(|e| Error::io(log, e))?;
    // mbstream's own failure (a full disk, a bad stream) first: the broken pipe it
    // left the copy with says nothing.
    if !status.success() {
        return Err(Error::CommandFailed {
            what: format!("mbstream -x into {}", datadir.display()),
            status: status.to_string(),
            output_tail: tail_of_file(log, 20),
        });
    }
    if let Err(e) = pumped {
        // The stream's own error (mariadb-backup failing) keeps its cause.
        return Err(match e.downcast::<Error>() {
            Ok(inner) => inner,
            Err(e) => Error::io(datadir, e),
        });
    }
    Ok(total)
}

/// Applies the copy's redo (`mariadb-backup --prepare`) so a server can start on it,
/// and reads what it says of itself.
pub fn prepare(datadir: &Path, log: &Path) -> Result<Restored> {
    let mut cmd = Command::new("mariadb-backup");
    cmd.arg("--no-defaults")
        .arg("--prepare")
        .arg(format!("--target-dir={}", datadir.display()))
        .stdin(Stdio::null());
    let out = run(&mut cmd, "mariadb-backup --prepare", "mariadb-backup", None)?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    std::fs::write(log, text).map_err(|e| Error::io(log, e))?;
    restored(datadir)
}

/// What a prepared copy in `datadir` says of itself.
pub fn restored(datadir: &Path) -> Result<Restored> {
    // MariaDB 11 names the file after itself; 10.x after xtrabackup.
    let info = ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"]
        .iter()
        .map(|f| datadir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| Error::Parse {
            what: datadir.display().to_string(),
            detail: "the copy has no binlog info file (was the server's binary log on?)".into(),
        })?;
    let text = std::fs::read_to_string(&info).map_err(|e| Error::io(&info, e))?;
    let gtid = parse_binlog_info(&text).map_err(|detail| Error::Parse {
        what: info.display().to_string(),
        detail,
    })?;
    let cnf = OptionFile::read(&datadir.join("backup-my.cnf"))?;
    let options = cnf
        .group("mysqld")
        .filter(|(k, _)| CARRIED.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Restored { gtid, options })
}

/// The GTID position of a binlog info line: `FILE<TAB>POSITION<TAB>GTID` (the GTID
/// field may be missing or empty: a server that never logged a transaction).
pub fn parse_binlog_info(text: &str) -> std::result::Result<GtidPos, String> {
    let line = text.lines().next().unwrap_or("").trim_end();
    let mut fields = line.split('\t');
    let (Some(file), Some(pos)) = (fields.next(), fields.next()) else {
        return Err(format!("expected FILE, POSITION and GTID, got {line:?}"));
    };
    if file.is_empty() || pos.parse::<u64>().is_err() {
        return Err(format!("expected FILE, POSITION and GTID, got {line:?}"));
    }
    GtidPos::parse(fields.next().unwrap_or("").trim()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binlog_info_gives_the_copys_position() {
        let p = parse_binlog_info("mysql-bin.000001\t779\t0-1-3\n").unwrap();
        assert_eq!(p.to_string(), "0-1-3");
        let p = parse_binlog_info("mysql-bin.000002\t1234\t0-1-30,1-7-2").unwrap();
        assert_eq!(p.to_string(), "0-1-30,1-7-2");
        assert!(parse_binlog_info("mysql-bin.000001\t4\t")
            .unwrap()
            .is_empty());
        assert!(parse_binlog_info("mysql-bin.000001\t4").unwrap().is_empty());
        for bad in ["", "x", "mysql-bin.000001\tfour\t0-1-3", "b\t4\t0-1"] {
            assert!(parse_binlog_info(bad).is_err(), "{bad:?}");
        }
    }

    /// A stream whose producer failed: its end is an error.
    struct FailedBackup(bool);
    impl Read for FailedBackup {
        fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                return Err(std::io::Error::other(Error::CommandFailed {
                    what: "mariadb-backup --backup".into(),
                    status: "exit status: 1".into(),
                    output_tail: "Access denied".into(),
                }));
            }
            Ok(0)
        }
    }

    #[test]
    fn a_copy_whose_backup_failed_is_an_error_with_its_cause() {
        if std::process::Command::new("mbstream")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIP: mbstream is not installed (package mariadb-backup)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().join("data");
        let e = receive(
            &mut FailedBackup(true),
            &datadir,
            &dir.path().join("log"),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::CommandFailed { what, .. } if what.contains("mariadb-backup")),
            "{e}"
        );
    }

    #[test]
    fn a_prepared_copy_names_its_position_and_the_settings_its_files_need() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("xtrabackup_binlog_info"),
            "b.000001\t779\t0-1-3\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("backup-my.cnf"),
            "# generated\n[mysqld]\ninnodb_checksum_algorithm=crc32\n\
             innodb_data_file_path=ibdata1:12M:autoextend\ninnodb_log_file_size=100663296\n\
             innodb_page_size=16384\ninnodb_undo_directory=./\ninnodb_undo_tablespaces=0\n",
        )
        .unwrap();
        let r = restored(dir.path()).unwrap();
        assert_eq!(r.gtid.to_string(), "0-1-3");
        let keys: Vec<&str> = r.options.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "innodb_data_file_path",
                "innodb_page_size",
                "innodb_undo_tablespaces"
            ]
        );
        std::fs::remove_file(dir.path().join("xtrabackup_binlog_info")).unwrap();
        let e = restored(dir.path()).unwrap_err().to_string();
        assert!(e.contains("binlog info"), "{e}");
    }
}
