//! What /proc says of a process: whether it lives, its command line. One reader for
//! the servers dbinstance starts, the operator's server it inspects, and (through
//! `substrate::process`) every process dbfork keeps.

use std::io;

/// True when `pid` exists and a thread of it still runs. Its main thread alone is not
/// enough to go by: a killed process's main thread is a zombie while the others still
/// exit, holding its files and their locks (a killed server's datadir lock outlives
/// its main thread by milliseconds), and a main thread may end before the rest.
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if runs(&stat) {
        return true;
    }
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| runs(&s)))
}

/// Whether a `stat` line's state is neither zombie nor dead.
fn runs(stat: &str) -> bool {
    !matches!(state(stat), Some('Z') | Some('X') | None)
}

/// The state letter of a `stat` line.
fn state(stat: &str) -> Option<char> {
    // It follows the parenthesised comm, which may itself contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// A process's command line, argument by argument (empty arguments left out).
pub fn cmdline(pid: u32) -> io::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_lives_and_has_its_arguments() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX - 1));
        let args = cmdline(me).unwrap();
        assert_eq!(args, std::env::args().collect::<Vec<_>>());
        assert!(cmdline(u32::MAX - 1).is_err());
    }

    /// A process whose main thread has exited lives while another thread runs, and
    /// is gone once that one ends.
    #[test]
    fn a_process_lives_while_any_thread_runs() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import ctypes, sys, threading\n\
                 threading.Thread(target=lambda: sys.stdin.read()).start()\n\
                 ctypes.CDLL(None).pthread_exit(None)",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/install-deps installs it)");
        let pid = child.id();
        let main_state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| state(&s))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while main_state() != Some('Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "its main thread never exited"
            );
            std::thread::yield_now();
        }
        assert!(process_alive(pid), "its reading thread still runs");
        // The reader reads to the end, and the process exits.
        child.stdin.take().unwrap().write_all(b"end").unwrap();
        while process_alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "its last thread never exited"
            );
            std::thread::yield_now();
        }
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not waited for: once it exits it stays a zombie until reaped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "true never exited");
            std::thread::yield_now();
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let mut child = child;
        child.wait().unwrap();
    }
}
