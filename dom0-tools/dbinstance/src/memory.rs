//! What a server process and the system it runs on use of memory, from /proc: the
//! server's resident and proportional set (`smaps_rollup`: pages shared with other
//! processes count in part in PSS), and the system's total and available memory
//! (`meminfo`). What `dbfork status` shows, and how sharing's saving is measured.

use serde::{Deserialize, Serialize};

/// A process's memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// The system's memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemMemory {
    pub total_kib: u64,
    pub available_kib: u64,
}

/// The value of `key:` in a /proc file of `key:   N kB` lines.
fn kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Reads `/proc/PID/smaps_rollup`'s totals.
pub fn parse_smaps_rollup(text: &str) -> Option<ProcessMemory> {
    Some(ProcessMemory {
        rss_kib: kib(text, "Rss")?,
        pss_kib: kib(text, "Pss")?,
    })
}

/// Reads `/proc/meminfo`'s total and available memory.
pub fn parse_meminfo(text: &str) -> Option<SystemMemory> {
    Some(SystemMemory {
        total_kib: kib(text, "MemTotal")?,
        available_kib: kib(text, "MemAvailable")?,
    })
}

/// The memory of process `pid`, if it runs and may be read.
pub fn process_memory(pid: u32) -> Option<ProcessMemory> {
    parse_smaps_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// This system's memory.
pub fn system_memory() -> Option<SystemMemory> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_are_read_and_a_file_without_them_is_none() {
        let smaps = "55d0c0000000-7ffd8e3fe000 ---p 00000000 00:00 0   [rollup]\n\
                     Rss:              184320 kB\nPss:              101234 kB\n\
                     Pss_Anon:          90000 kB\nShared_Clean:      80000 kB\n";
        assert_eq!(
            parse_smaps_rollup(smaps),
            Some(ProcessMemory {
                rss_kib: 184320,
                pss_kib: 101234
            })
        );
        assert_eq!(parse_smaps_rollup("Rss: 12 kB\n"), None);
        assert_eq!(parse_smaps_rollup("Rss: many kB\nPss: 1 kB\n"), None);
        let meminfo = "MemTotal:        4028180 kB\nMemFree:          120000 kB\n\
                       MemAvailable:    2966428 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some(SystemMemory {
                total_kib: 4028180,
                available_kib: 2966428
            })
        );
    }

    #[test]
    fn this_process_and_system_are_read() {
        let me = process_memory(std::process::id()).expect("our own smaps_rollup");
        assert!(me.rss_kib > 0 && me.pss_kib > 0 && me.pss_kib <= me.rss_kib);
        let sys = system_memory().expect("/proc/meminfo");
        assert!(sys.available_kib <= sys.total_kib);
    }
}
