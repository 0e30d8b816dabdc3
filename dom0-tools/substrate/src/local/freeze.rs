//! Quiescing what writes a volume, for a snapshot.
//!
//! A block volume mounted here: fsfreeze flushes everything the filesystem
//! acknowledged through the loop device and the FUSE file to the volume's export, and
//! holds new writes until the thaw.
//!
//! A directory volume (a tree on the store's own file system): its server's process is
//! stopped (SIGSTOP: every thread, after any write it was in the middle of), the tree
//! is copied file by file, and the process continues. A filesystem freeze would stop
//! every server of the store, or the whole host when the store is on its root. The stop
//! and the continue are sent by a small helper process reading a pipe from us, so a
//! dbfork killed in between still lets the server go on (the pipe closes).

use super::tools;
use crate::error::{Error, Result};
use crate::Quiesced;
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the threads of a server get to reach the stopped state.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Freezes the filesystem at `mountpoint`; the returned guard thaws it when dropped.
pub fn freeze(mountpoint: &Path) -> Result<Quiesced> {
    let mp = mountpoint.display().to_string();
    tools::run("fsfreeze", &["-f", &mp])?;
    Ok(Quiesced::new(move || {
        if let Err(e) = tools::run("fsfreeze", &["-u", &mp]) {
            tracing::error!(error = %e, mountpoint = %mp, "could not thaw; run fsfreeze -u");
        }
    }))
}

/// Stops process `pid` (every thread) until the returned guard drops.
pub fn stop_process(pid: u32) -> Result<Quiesced> {
    let (mut helper, mut gate) = spawn_holder(pid)?;
    let stopped = wait_all_stopped(pid);
    let release = move || {
        // A line, or the pipe closing, makes the helper send SIGCONT.
        let _ = gate.write_all(b"go\n");
        drop(gate);
        let _ = helper.wait();
    };
    if !stopped {
        release();
        return Err(Error::StillRunning {
            name: format!(
                "process {pid} (not stopped within {} s)",
                STOP_TIMEOUT.as_secs()
            ),
            pid: pid as i32,
        });
    }
    Ok(Quiesced::new(release))
}

/// The helper that stops `pid` and continues it once its stdin says so or closes.
fn spawn_holder(pid: u32) -> Result<(Child, ChildStdin)> {
    let mut helper = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"kill -STOP "$1" || exit 1; read -r _; kill -CONT "$1""#)
        .arg("dbfork-hold")
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: format!("sh (stopping {pid})"),
            source,
        })?;
    let gate = helper.stdin.take().expect("piped");
    Ok((helper, gate))
}

/// Whether every thread of `pid` reached the stopped state (T) in time. A process
/// that is gone counts as still: nothing of it writes.
fn wait_all_stopped(pid: u32) -> bool {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true;
        };
        let all = tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .map(|st| {
                    let state = st.rsplit(')').next().map(str::trim_start).unwrap_or("");
                    state.starts_with('T') || state.starts_with('t') || state.starts_with('Z')
                })
                .unwrap_or(true)
        });
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pid: u32) -> char {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        st.rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .chars()
            .next()
            .unwrap()
    }

    #[test]
    fn a_stopped_process_runs_again_when_the_guard_drops_or_the_holder_dies() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let running = || crate::process::wait_until(Duration::from_secs(5), || state(pid) != 'T');
        let held = stop_process(pid).unwrap();
        assert_eq!(state(pid), 'T');
        drop(held);
        assert!(running());
        // The holder dies mid-snapshot: its end of the pipe closes without a word, and
        // the process goes on all the same.
        let (mut helper, gate) = spawn_holder(pid).unwrap();
        assert!(wait_all_stopped(pid));
        assert_eq!(state(pid), 'T');
        drop(gate);
        helper.wait().unwrap();
        assert!(running());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
