//! Running the external MariaDB tools (mariadb-install-db, mariadb-backup) with errors
//! that say what to install.

use std::path::Path;
use std::process::{Command, Output};

use crate::error::{Error, Result};

/// Runs `cmd` to completion; a missing binary names its Debian package, a failure
/// carries the tail of its output (and of `extra_log` when the tool logs elsewhere).
pub fn run(
    cmd: &mut Command,
    what: &str,
    package: &'static str,
    extra_log: Option<&Path>,
) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(?cmd, "running {what}");
    let out = cmd
        .output()
        .map_err(|e| spawn_error(&program, package, e))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if let Some(log) = extra_log {
            text.push_str(&format!("\n--- {} ---\n", log.display()));
            text.push_str(&tail_of_file(log, 20));
        }
        return Err(Error::CommandFailed {
            what: what.to_string(),
            status: out.status.to_string(),
            output_tail: tail_lines(&text, 30),
        });
    }
    Ok(out)
}

/// The error for a tool that could not be run: a missing one names its package.
pub fn spawn_error(program: &str, package: &'static str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => Error::ToolMissing {
            tool: program.to_string(),
            package,
        },
        _ => Error::io(program, e),
    }
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How much of a log's end is read for its last lines: logs grow for as long as a
/// server lives, and a status line must not read all of one.
const LOG_END: u64 = 64 * 1024;

/// The end of a (log) file, at most `LOG_END` bytes, starting at a line; `None` when
/// it cannot be read.
pub fn read_end(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(LOG_END);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    // Read from the middle of a line: that line is cut, and dropped.
    Some(match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    })
}

/// The last `n` lines of a (log) file; empty when it cannot be read.
pub fn tail_of_file(path: &Path, n: usize) -> String {
    read_end(path)
        .map(|t| tail_lines(&t, n))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_package() {
        let err = run(
            &mut Command::new("/nonexistent/mariadb-backup"),
            "backup",
            "mariadb-backup",
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ToolMissing {
                    package: "mariadb-backup",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("mariadb-backup"));
    }

    #[test]
    fn failure_carries_output_tail() {
        let err = run(
            Command::new("sh").args(["-c", "echo first; echo boom >&2; exit 3"]),
            "shell",
            "dash",
            None,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("boom") && text.contains("shell failed"),
            "{text}"
        );
    }

    #[test]
    fn the_end_of_a_long_file_is_read_from_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&p, &text).unwrap();
        let end = read_end(&p).unwrap();
        assert!(end.len() as u64 <= LOG_END);
        assert!(end.starts_with("line "), "{:?}", &end[..20]);
        assert_eq!(tail_of_file(&p, 2), "line 19998\nline 19999");
        assert_eq!(read_end(&dir.path().join("none")), None);
    }

    #[test]
    fn tail_lines_keeps_last() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("", 2), "");
    }
}
