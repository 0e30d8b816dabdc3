//! Running the host tools dbfork drives (losetup, mount, mkfs, nbdfuse, fsfreeze).
//!
//! Every failure names the command and carries its stderr, because "mount failed" alone
//! tells an operator nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("`{program}` is not installed (install the Debian package {package}, or run scripts/install-deps)")]
    Missing {
        program: String,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// The Debian package that provides a tool, for the error message.
fn package_of(program: &str) -> &'static str {
    match program {
        "nbdfuse" | "nbdinfo" | "nbdcopy" => "libnbd-bin",
        "mkfs.xfs" | "xfs_freeze" => "xfsprogs",
        "mkfs.ext4" => "e2fsprogs",
        "fusermount3" => "fuse3",
        _ => "util-linux",
    }
}

/// Runs `program args...` to completion and returns its stdout, trimmed.
pub fn run(program: &str, args: &[&str]) -> Result<String, ToolError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_error(program, command.clone(), source))?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn spawn_error(program: &str, command: String, source: std::io::Error) -> ToolError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ToolError::Missing {
            program: program.to_string(),
            package: package_of(program),
        }
    } else {
        ToolError::Spawn { command, source }
    }
}

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

/// True while a process with this pid exists (and is not a zombie we could reap).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name; Z is a zombie.
        Ok(stat) => {
            !matches!(stat.rsplit(')').next().map(str::trim_start), Some(s) if s.starts_with('Z'))
        }
        Err(_) => false,
    }
}

/// Sends a signal to a process; a process already gone is not an error.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid only makes it fail.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// True if `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mount_path(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        let err = run("nbdfuse-does-not-exist", &[]).unwrap_err();
        assert!(matches!(err, ToolError::Missing { .. }), "{err}");
        let err = spawn_error(
            "nbdfuse",
            "nbdfuse".into(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(err.to_string().contains("libnbd-bin"), "{err}");
    }

    #[test]
    fn failure_carries_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains('3'), "{msg}");
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/definitely/not/here")));
    }

    #[test]
    fn alive_sees_self_and_not_a_reaped_child() {
        assert!(process_alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
