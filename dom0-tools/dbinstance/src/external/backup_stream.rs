//! mariadb-backup streaming a copy of the operator's server.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};

/// mariadb-backup running, its stream read through [`Read`].
pub struct BackupStream {
    child: Child,
    stdout: ChildStdout,
    log: PathBuf,
    /// How long it waits for the server's locks before its copy starts.
    lock_wait: Duration,
}

impl BackupStream {
    pub(super) fn spawn(mut cmd: Command, log: &Path, lock_wait: Duration) -> Result<BackupStream> {
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
            lock_wait,
        })
    }

    /// Why it failed: the lock it waited for in vain, named, or the end of its log.
    fn failed(&self, status: ExitStatus) -> Error {
        let tail = crate::tools::tail_of_file(&self.log, 20);
        // What mariadb-backup 10.11 says when BACKUP STAGE START outwaits
        // --startup-wait-timeout: a session's running statement it waited for, or an
        // idle session's lock the statement itself waited for.
        let start_timed_out = tail.contains("BACKUP STAGE START: Lock wait timeout exceeded");
        if tail.contains("Unable to obtain lock") || start_timed_out {
            return Error::BackupLockWait {
                secs: self.lock_wait.as_secs(),
            };
        }
        Error::CommandFailed {
            what: format!("mariadb-backup --backup (log: {})", self.log.display()),
            status: status.to_string(),
            output_tail: tail,
        }
    }

    /// Waits for mariadb-backup; a failure carries the end of its log.
    pub fn finish(mut self) -> Result<()> {
        let status = self.child.wait().map_err(|e| Error::io(&self.log, e))?;
        if status.success() {
            return Ok(());
        }
        Err(self.failed(status))
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
                return Err(std::io::Error::other(self.failed(status)));
            }
        }
        Ok(n)
    }
}
