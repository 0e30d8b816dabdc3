//! The export process of a volume: `dbfork volume export` serving it over NBD on a
//! Unix socket in the store's run dir, with its control socket beside it. Every
//! backend hands domains their disks through one; it owns the volume's lock and
//! hydrator, and outlives the command that started it.

use crate::error::{Error, Result};
use crate::process::{spawn_helper, STARTUP_TIMEOUT};
use crate::RunDir;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Starts the export process for `volume` in the background, detached from our
/// terminal and process group, and waits until its NBD socket accepts connections.
/// Returns its pid and NBD socket.
pub fn spawn(store: &Path, volume: &str, dbfork_exe: &Path) -> Result<(u32, PathBuf)> {
    let run_dir = RunDir::new(store);
    run_dir
        .ensure()
        .map_err(Error::io("creating the run dir", run_dir.path()))?;
    let socket = run_dir.nbd_socket(volume);
    // The readiness check below connects to this path: a previous export of the
    // volume that is still going away (killed, its listening socket not yet closed)
    // would answer it before the new one runs. Only the new one's bind makes it again.
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing the stale socket", &socket)(e)),
    }
    let log_path = run_dir.export_log(volume);
    let mut cmd = Command::new(dbfork_exe);
    cmd.arg("--store")
        .arg(store)
        .args(["volume", "export", volume, "--nbd"])
        .arg(format!("unix:{}", socket.display()));
    let what = format!("{} volume export {volume}", dbfork_exe.display());
    let up = spawn_helper(cmd, &what, &log_path, STARTUP_TIMEOUT, || {
        UnixStream::connect(&socket).is_ok()
    })?;
    let Some(pid) = up else {
        return Err(Error::ExportFailed {
            volume: volume.to_string(),
            log: dbinstance::tools::tail_of_file(&log_path, 5).replace('\n', " | "),
        });
    };
    Ok((pid, socket))
}

/// Whether `pid` is the export process of `volume` (a pid recorded before a reboot or
/// a crash may belong to anything now).
pub fn is_export_of(pid: u32, volume: &str) -> bool {
    crate::process::process_alive(pid)
        && crate::process::cmdline(pid).is_some_and(|args| {
            args.windows(3)
                .any(|w| w[0] == "export" && w[1] == volume && w[2] == "--nbd")
        })
}
