//! Helper processes dom0 runs (volume exports, the page table daemon) and the waits
//! around them.

use crate::error::{Error, Result};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a helper process gets to show up or go away before it counts as stuck.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `ready` until it returns true or `timeout` passes. Used to wait for another
/// process to reach a state we can observe (a socket that accepts, a file that exists);
/// the short pause between polls is not synchronisation, the condition is.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a dom0 helper (`what`, for errors) in the background: its output appended to
/// `log`, in its own process group (a Ctrl-C meant for the CLI must not take a disk or
/// the page table away from the servers), and waits until `ready` says it serves.
/// Returns its pid, or `None` if it did not come up within `timeout` (it is killed
/// then). It outlives the caller; whoever stops it waits for the pid to go.
pub fn spawn_helper(
    mut cmd: Command,
    what: &str,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<Option<u32>> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("opening the log", log))?;
    let err = out.try_clone().map_err(Error::io("opening the log", log))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: what.to_string(),
            source,
        })?;
    if !wait_until(timeout, || matches!(child.try_wait(), Ok(None)) && ready()) {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(None);
    }
    let pid = child.id();
    std::mem::forget(child);
    Ok(Some(pid))
}

/// True while a process with this pid exists (and is not a zombie we could reap).
pub fn process_alive(pid: u32) -> bool {
    dbinstance::procfs::process_alive(pid)
}

/// A process's command line, argument by argument (`None` when it is gone).
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    dbinstance::procfs::cmdline(pid).ok()
}

/// Sends a signal to a process; a process already gone is not an error.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid only makes it fail.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Stops a helper process: SIGTERM (an export flushes and commits its region map
/// before it exits), then waits for it to go away. False if it is still there.
pub fn stop_process(pid: u32) -> bool {
    if !process_alive(pid) {
        return true;
    }
    signal(pid, libc::SIGTERM);
    reap_if_child(pid);
    wait_until(STARTUP_TIMEOUT, || {
        reap_if_child(pid);
        !process_alive(pid)
    })
}

/// Reaps `pid` if it is a child of ours that has exited.
pub fn reap_if_child(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a pid; if it is not our child it fails with ECHILD.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_sees_self_and_not_a_reaped_child() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn a_stopped_helper_is_gone() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        std::mem::forget(child);
        assert!(stop_process(pid));
        assert!(!process_alive(pid));
    }
}
