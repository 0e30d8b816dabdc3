//! What the figures were measured on: written next to every table.

use std::process::Command;

pub fn describe() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown OS".into());
    let kernel = first_line(Command::new("uname").arg("-r"));
    let qemu = first_line(Command::new("qemu-storage-daemon").arg("--version"));
    format!("{cpus}-core VM, {mem_gib:.0} GiB RAM, {os}, kernel {kernel}, {qemu}")
}

/// The 1/5/15-minute load averages, as /proc/loadavg has them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn utc_now() -> String {
    first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]))
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The workspace commit the binaries were presumably built from, and whether the
/// tree had uncommitted changes (then the figures are for that work in progress).
pub fn source_rev(workspace: &std::path::Path) -> String {
    let rev = first_line(Command::new("git").arg("-C").arg(workspace).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]));
    let dirty = Command::new("git")
        .arg("-C")
        .arg(workspace)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{rev} + uncommitted changes")
    } else {
        rev
    }
}
