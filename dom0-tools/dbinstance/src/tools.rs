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
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => Error::ToolMissing {
            tool: program.clone(),
            package,
        },
        _ => Error::io(&program, e),
    })?;
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

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a (log) file; empty when it cannot be read.
pub(crate) fn tail_of_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_lines(&String::from_utf8_lossy(&bytes), n),
        Err(_) => String::new(),
    }
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
    fn tail_lines_keeps_last() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("", 2), "");
    }
}
