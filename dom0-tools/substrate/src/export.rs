//! The export process of a volume: `dbfork volume export` serving it over NBD on a
//! Unix socket in the store's run dir, with its control socket beside it. Every
//! backend hands domains their disks through one; it owns the volume's lock and
//! hydrator, and outlives the command that started it.

use crate::error::{Error, Result};
use crate::process::{wait_until, STARTUP_TIMEOUT};
use crate::RunDir;
use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Starts the export process for `volume` in the background, detached from our
/// terminal and process group, and waits until its NBD socket accepts connections.
/// Returns its pid and NBD socket.
pub fn spawn(store: &Path, volume: &str, dbfork_exe: &Path) -> Result<(u32, PathBuf)> {
    let run_dir = RunDir::new(store);
    run_dir
        .ensure()
        .map_err(Error::io("creating the run dir", run_dir.path()))?;
    let socket = run_dir.nbd_socket(volume);
    let log_path = run_dir.export_log(volume);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(Error::io("opening the export log", &log_path))?;
    let log2 = log
        .try_clone()
        .map_err(Error::io("opening the export log", &log_path))?;
    let mut child = Command::new(dbfork_exe)
        .arg("--store")
        .arg(store)
        .args(["volume", "export", volume, "--nbd"])
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(log2)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for the CLI must not take the disk away
        // from a mounted filesystem.
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: format!("{} volume export {volume}", dbfork_exe.display()),
            source,
        })?;
    let pid = child.id();
    let up = wait_until(STARTUP_TIMEOUT, || {
        matches!(child.try_wait(), Ok(None)) && UnixStream::connect(&socket).is_ok()
    });
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(Error::ExportFailed {
            volume: volume.to_string(),
            log: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    // The export outlives us; dropping `child` does not kill it. Reaping it is the job
    // of whoever stops it (they wait for the pid to disappear).
    std::mem::forget(child);
    Ok((pid, socket))
}
