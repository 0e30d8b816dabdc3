//! Running the host tools the local substrate drives (losetup, mount, mkfs, nbdfuse,
//! fsfreeze).
//!
//! Every failure names the command and carries its stderr, because "mount failed" alone
//! tells an operator nothing.

use crate::error::Error;
use std::path::Path;
use std::process::{Command, Stdio};

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
pub fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_error(program, command.clone(), source))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn spawn_error(program: &str, command: String, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        Error::ToolMissing {
            program: program.to_string(),
            package: package_of(program),
        }
    } else {
        Error::Spawn { command, source }
    }
}

/// True if `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    // A dead FUSE mount cannot be stat'ed (ENOTCONN), so it cannot be canonicalised
    // either; it is still a mount point (and the one detach must take away).
    let canon = match path.canonicalize() {
        Ok(c) => c,
        Err(_) if path.is_absolute() => path.to_path_buf(),
        Err(_) => match std::env::current_dir() {
            Ok(d) => d.join(path),
            Err(_) => return false,
        },
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
        assert!(matches!(err, Error::ToolMissing { .. }), "{err}");
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
}
