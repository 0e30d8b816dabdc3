//! mariadb-backup streaming a copy of the operator's server.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::error::{Error, Result};

/// mariadb-backup running, its stream read through [`Read`].
pub struct BackupStream {
    child: Child,
    stdout: ChildStdout,
    log: PathBuf,
}

impl BackupStream {
    pub(super) fn spawn(mut cmd: Command, log: &Path) -> Result<BackupStream> {
        let err = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| crate::tools::spawn_error("mariadb-backup", "mariadb-backup", e))?;
        let stdout = child.stdout.take().expect("piped");
        Ok(BackupStream {
            child,
            stdout,
            log: log.to_path_buf(),
        })
    }

    /// Waits for mariadb-backup; a failure carries the end of its log.
    pub fn finish(mut self) -> Result<()> {
        let status = self.child.wait().map_err(|e| Error::io(&self.log, e))?;
        if status.success() {
            return Ok(());
        }
        Err(Error::CommandFailed {
            what: format!("mariadb-backup --backup (log: {})", self.log.display()),
            status: status.to_string(),
            output_tail: crate::tools::tail_of_file(&self.log, 20),
        })
    }

    /// Stops it (a copy given up).
    pub fn abort(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Read for BackupStream {
    /// The stream; its end is an error when mariadb-backup failed, so a copy it did
    /// not finish is never taken for a whole one (and never prepared).
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(Error::CommandFailed {
                    what: format!("mariadb-backup --backup (log: {})", self.log.display()),
                    status: status.to_string(),
                    output_tail: crate::tools::tail_of_file(&self.log, 20),
                }));
            }
        }
        Ok(n)
    }
}
