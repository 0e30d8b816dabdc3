//! What /proc says of a process: whether it lives, its command line. One reader for
//! the servers dbinstance starts, the operator's server it inspects, and (through
//! `substrate::process`) every process dbfork keeps.

use std::io;

/// True when `pid` exists and is neither a zombie nor dead.
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised comm, which may itself contain spaces.
    match stat.rfind(')') {
        Some(i) => !matches!(
            stat[i + 1..].trim_start().chars().next(),
            Some('Z') | Some('X') | None
        ),
        None => false,
    }
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
