//! Checks before a server starts: is the port free, is the datadir locked by a live
//! server, is a pid ours, may it map as much as page sharing needs.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// Fails with `PortInUse` when something already listens on `addr:port`.
pub fn check_port_free(addr: &str, port: u16) -> Result<()> {
    match TcpListener::bind((addr, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::PortInUse {
            addr: addr.to_string(),
            port,
            detail: String::new(),
        }),
        Err(e) => Err(Error::InvalidConfig(format!(
            "cannot bind {addr}:{port} to check it: {e}"
        ))),
    }
}

/// A free TCP port on 127.0.0.1 right now (the OS picks it; another process may still
/// take it before the server binds, which start() then reports as PortInUse).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| Error::io("127.0.0.1:0", e))?;
    let port = l
        .local_addr()
        .map_err(|e| Error::io("127.0.0.1:0", e))?
        .port();
    Ok(port)
}

/// The pid of a live process holding InnoDB's write lock on `datadir/ibdata1`, which
/// every running mariadbd takes on its system tablespace.
pub fn datadir_lock_holder(datadir: &Path) -> Result<Option<i32>> {
    let path = datadir.join("ibdata1");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    // SAFETY: flock is plain old data; zeroed is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: the fd is open for the duration of the call and `fl` is a valid,
    // exclusively borrowed flock the kernel fills in.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc != 0 {
        return Err(Error::io(&path, std::io::Error::last_os_error()));
    }
    if fl.l_type == libc::F_UNLCK as libc::c_short {
        Ok(None)
    } else {
        Ok(Some(fl.l_pid))
    }
}

/// True when `pid` is a live (not zombie) process whose command line contains `needle`.
pub(crate) fn process_matches(pid: i32, needle: &str) -> bool {
    pid > 0
        && process_alive(pid)
        && crate::procfs::cmdline(pid as u32).is_ok_and(|args| args.iter().any(|a| a == needle))
}

/// True when `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: i32) -> bool {
    pid > 0 && crate::procfs::process_alive(pid as u32)
}

/// Where the kernel keeps the per-process limit on mappings.
const MAX_MAP_COUNT: &str = "/proc/sys/vm/max_map_count";

/// Mappings a server sharing a buffer pool of `buffer_pool` bytes may need: every
/// shared 16 KiB frame is a mapping of its own, and a split mapping costs one more,
/// on top of what a server has anyway (the kernel's default limit).
pub fn mappings_needed(buffer_pool: u64) -> u64 {
    2 * (buffer_pool / 16384) + 65530
}

/// Raises the host's `vm.max_map_count` to what a server sharing `buffer_pool` bytes
/// needs, when it is lower. Without it the agent runs out of mappings part way and
/// turns sharing off (with a reason in its counters); so a failure here is logged,
/// not fatal.
pub fn ensure_map_count(buffer_pool: u64) {
    let need = mappings_needed(buffer_pool);
    let now = std::fs::read_to_string(MAX_MAP_COUNT)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match now {
        Some(n) if n >= need => {}
        Some(n) => match std::fs::write(MAX_MAP_COUNT, need.to_string()) {
            Ok(()) => tracing::info!(
                from = n,
                to = need,
                "raised vm.max_map_count for page sharing"
            ),
            Err(e) => tracing::warn!(
                "vm.max_map_count is {n}, page sharing of a {} MiB buffer pool needs {need}: {e}",
                buffer_pool >> 20
            ),
        },
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_port_is_reported_in_use() {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let err = check_port_free("127.0.0.1", port).unwrap_err();
        assert!(matches!(err, Error::PortInUse { port: p, .. } if p == port));
        assert!(err.to_string().contains(&port.to_string()));
        drop(l);
        check_port_free("127.0.0.1", port).unwrap();
    }

    #[test]
    fn lock_holder_seen_from_other_process() {
        let dir = tempfile::tempdir().unwrap();
        let ib = dir.path().join("ibdata1");
        std::fs::write(&ib, b"x").unwrap();
        assert_eq!(datadir_lock_holder(dir.path()).unwrap(), None);
        // flock(1) takes BSD locks, not fcntl ones; python's fcntl.lockf takes fcntl locks.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl,sys;f=open(sys.argv[1],'r+');fcntl.lockf(f,fcntl.LOCK_EX);print('locked',flush=True);sys.stdin.read()",
            ])
            .arg(&ib)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        let holder = datadir_lock_holder(dir.path()).unwrap();
        drop(child.stdin.take());
        child.wait().unwrap();
        assert_eq!(holder, Some(child.id() as i32));
    }

    #[test]
    fn own_process_alive_and_matches() {
        let me = std::process::id() as i32;
        assert!(process_alive(me));
        assert!(!process_matches(me, "--definitely-not-an-arg"));
        assert!(!process_alive(i32::MAX - 1));
    }

    #[test]
    fn the_mapping_limit_grows_with_the_buffer_pool() {
        assert_eq!(mappings_needed(0), 65530);
        // 2 GiB: 131072 frames, each possibly split from its neighbours.
        assert_eq!(mappings_needed(2 << 30), 2 * 131072 + 65530);
        assert!(mappings_needed(8 << 30) > 1_000_000);
    }
}
