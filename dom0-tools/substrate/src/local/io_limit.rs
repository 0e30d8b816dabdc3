//! A server's read-IOPS limit on its own volume (`dbfork clone --read-iops N`): the
//! kernel's IO controller, on the block device the replica's filesystem sits on, for
//! the replica's server process from its first instruction (the start gate puts it
//! into the group). Models slow storage (an HDD does ~100-200 random reads/s) and
//! keeps a replica from flooding a disk it shares.
//!
//! cgroup v1 (`blkio.throttle.read_iops_device`) and v2 (`io.max riops=`) are both
//! supported; which one is found at `root` decides. One group per replica, named
//! after the store and the replica, removed when the replica is destroyed.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

use crate::error::{Error, Result};

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(what, path.to_path_buf())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Controller {
    /// cgroup v1 blkio hierarchy.
    V1,
    /// cgroup v2 unified hierarchy with the io controller.
    V2,
}

/// What `dbfork status` shows and `destroy` removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimitRecord {
    pub controller: Controller,
    /// The group's directory.
    pub cgroup: PathBuf,
    /// "MAJ:MIN" of the limited device.
    pub device: String,
    pub read_iops: u32,
}

/// Which controller `root` offers, v1 blkio first (on a hybrid host v2 usually has
/// no io controller because blkio is bound to v1).
pub fn detect(root: &Path) -> Result<Controller> {
    if root.join("blkio/blkio.throttle.read_iops_device").exists() {
        return Ok(Controller::V1);
    }
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "io") {
        return Ok(Controller::V2);
    }
    let root = root.display();
    Err(Error::NoIoController {
        detail: format!(
            "neither cgroup v1 blkio ({root}/blkio/blkio.throttle.read_iops_device) nor cgroup \
             v2 with the io controller ({root}/cgroup.controllers listing io) is mounted"
        ),
    })
}

/// The line that sets the limit, in the controller's own syntax.
pub fn limit_line(controller: Controller, device: &str, read_iops: u32) -> String {
    match controller {
        Controller::V1 => format!("{device} {read_iops}\n"),
        Controller::V2 => format!("{device} riops={read_iops}\n"),
    }
}

fn limit_file(controller: Controller) -> &'static str {
    match controller {
        Controller::V1 => "blkio.throttle.read_iops_device",
        Controller::V2 => "io.max",
    }
}

/// "MAJ:MIN" of a block device node such as /dev/loop3.
pub fn device_number(node: &Path) -> Result<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(node).map_err(io_err("stat", node))?;
    if !m.file_type().is_block_device() {
        return Err(Error::NotBlockDevice(node.display().to_string()));
    }
    let r = m.rdev();
    Ok(format!("{}:{}", libc::major(r), libc::minor(r)))
}

/// Creates the group `name` limited to `read_iops` on `device` ("MAJ:MIN").
pub fn create(root: &Path, name: &str, device: &str, read_iops: u32) -> Result<IoLimitRecord> {
    if read_iops == 0 {
        return Err(Error::ZeroIops);
    }
    let controller = detect(root)?;
    let cgroup = match controller {
        Controller::V1 => root.join("blkio").join(name),
        Controller::V2 => {
            // Children of the root get the io controller only once the root hands it down.
            let ctl = root.join("cgroup.subtree_control");
            std::fs::write(&ctl, "+io").map_err(io_err("enabling io in", &ctl))?;
            root.join(name)
        }
    };
    match std::fs::create_dir(&cgroup) {
        Ok(()) => {}
        // Left by a replica of the same name that was not destroyed cleanly: reused.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating", &cgroup)(e)),
    }
    let rec = IoLimitRecord {
        controller,
        cgroup,
        device: device.to_string(),
        read_iops,
    };
    let file = rec.cgroup.join(limit_file(controller));
    if let Err(e) = std::fs::write(&file, limit_line(controller, device, read_iops)) {
        let _ = remove(&rec);
        return Err(io_err("setting the limit in", &file)(e));
    }
    Ok(rec)
}

/// Moves process `pid` (all its threads) into the group.
pub fn add_process(rec: &IoLimitRecord, pid: u32) -> Result<()> {
    let procs = rec.cgroup.join("cgroup.procs");
    std::fs::write(&procs, format!("{pid}\n")).map_err(io_err("adding a process to", &procs))
}

/// Reads the controller's count of read requests the group made on its device (v1:
/// blkio.throttle.io_serviced "MAJ:MIN Read N"; v2: io.stat "MAJ:MIN rbytes=.. rios=N").
pub fn reads_serviced(rec: &IoLimitRecord) -> Result<u64> {
    type Parse = fn(&str, &str) -> Option<u64>;
    let (file, parse): (&str, Parse) = match rec.controller {
        Controller::V1 => ("blkio.throttle.io_serviced", parse_v1_reads),
        Controller::V2 => ("io.stat", parse_v2_reads),
    };
    let path = rec.cgroup.join(file);
    let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
    Ok(parse(&text, &rec.device).unwrap_or(0))
}

fn parse_v1_reads(text: &str, device: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == device && f.next()? == "Read")
            .then(|| f.next()?.parse().ok())
            .flatten()
    })
}

fn parse_v2_reads(text: &str, device: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        if f.next()? != device {
            return None;
        }
        f.find_map(|kv| kv.strip_prefix("rios=")?.parse().ok())
    })
}

/// Removes the group. Processes still inside go back to the root group first (a
/// group with members cannot be removed). Missing already is fine.
pub fn remove(rec: &IoLimitRecord) -> Result<()> {
    if !rec.cgroup.exists() {
        return Ok(());
    }
    let parent_procs = rec
        .cgroup
        .parent()
        .map(|p| p.join("cgroup.procs"))
        .unwrap_or_default();
    if let Ok(procs) = std::fs::read_to_string(rec.cgroup.join("cgroup.procs")) {
        for p in procs.lines() {
            let _ = std::fs::write(&parent_procs, p);
        }
    }
    // A process killed a moment ago can still be counted in the group while it exits
    // (EBUSY): retried briefly rather than leaving the group behind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(&rec.cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(io_err("removing", &rec.cgroup)(e)),
        }
    }
}

/// The directories IO groups are made in (v1's blkio hierarchy, v2's root), where a
/// sweep looks for groups of stores that are gone.
pub fn group_roots() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    vec![root.join("blkio"), root.to_path_buf()]
}

/// "MAJ:MIN" of the whole disk holding `path`: the IO controller limits whole disks,
/// not partitions, so a partition's disk is found through sysfs.
pub fn disk_of(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(io_err("stat", path))?;
    let (maj, min) = (libc::major(m.dev()), libc::minor(m.dev()));
    let sys = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    if sys.join("partition").exists() {
        if let Ok(parent) = std::fs::read_to_string(sys.join("../dev")) {
            return Ok(parent.trim().to_string());
        }
    }
    Ok(format!("{maj}:{min}"))
}

/// A read limit on the disk that holds a path, for a server started with
/// [`super::server::launch`]: how a baseline server (a mariadb-backup replica in a
/// plain directory) gets the same slow storage as a dbfork replica gets on its
/// volume. The group is removed when this is dropped.
pub struct DiskReadLimit {
    rec: IoLimitRecord,
}

impl DiskReadLimit {
    /// A new group `name`, `read_iops` reads a second on the disk under `path`.
    pub fn on_disk_of(path: &Path, name: &str, read_iops: u32) -> Result<Self> {
        let rec = create(Path::new(CGROUP_ROOT), name, &disk_of(path)?, read_iops)?;
        Ok(DiskReadLimit { rec })
    }

    /// What [`super::server::Launch::io_limit`] takes.
    pub fn record(&self) -> &IoLimitRecord {
        &self.rec
    }
}

impl Drop for DiskReadLimit {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.rec) {
            tracing::warn!("removing the read limit {}: {e}", self.rec.cgroup.display());
        }
    }
}

/// The group name of replica `name` in the store `store_dir`: the store's inode
/// number keeps two stores on one host apart (as the sharing pools do).
pub fn group_name(store_dir: &Path, name: &str) -> String {
    format!("dbfork-{}-{name}", super::orphans::store_tag(store_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_lines_in_each_syntax() {
        assert_eq!(limit_line(Controller::V1, "7:3", 150), "7:3 150\n");
        assert_eq!(limit_line(Controller::V2, "7:3", 150), "7:3 riops=150\n");
    }

    #[test]
    fn read_counts_are_found_for_the_right_device() {
        let v1 = "7:2 Read 5\n7:2 Write 1\n7:3 Read 42\n7:3 Write 0\n7:3 Total 42\nTotal 48\n";
        assert_eq!(parse_v1_reads(v1, "7:3"), Some(42));
        assert_eq!(parse_v1_reads(v1, "7:9"), None);
        let v2 = "7:2 rbytes=1 wbytes=0 rios=3 wios=0\n7:3 rbytes=4096 wbytes=0 rios=17 wios=2 dbytes=0 dios=0\n";
        assert_eq!(parse_v2_reads(v2, "7:3"), Some(17));
        assert_eq!(parse_v2_reads(v2, "7:30"), None);
    }

    #[test]
    fn no_controller_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = detect(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("no kernel IO controller") && e.contains("--read-iops"),
            "{e}"
        );
    }

    #[test]
    fn detects_v2_from_its_controller_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Controller::V2);
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory ioo\n").unwrap();
        assert!(detect(dir.path()).is_err());
    }

    #[test]
    fn zero_iops_and_non_block_devices_are_refused() {
        assert!(matches!(
            create(Path::new("/nonexistent"), "x", "7:0", 0),
            Err(Error::ZeroIops)
        ));
        let e = device_number(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(e, Error::NotBlockDevice(_)), "{e}");
    }

    /// On this kernel's real controller: a group is made with the limit, a process
    /// joins it, and removal takes the process back out.
    #[test]
    fn real_group_limits_and_is_removed() {
        let root = Path::new(CGROUP_ROOT);
        let controller = match detect(root) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIP real_group_limits_and_is_removed: {e}");
                return;
            }
        };
        let Some(dev) = ["/dev/loop0", "/dev/sda", "/dev/vda", "/dev/nvme0n1"]
            .iter()
            .find_map(|d| device_number(Path::new(d)).ok())
        else {
            eprintln!("SKIP real_group_limits_and_is_removed: no block device node to limit");
            return;
        };
        let name = format!("dbfork-test-{}", std::process::id());
        let rec = match create(root, &name, &dev, 123) {
            Ok(r) => r,
            // loop0 exists as a node but may have no backing file: the kernel refuses.
            Err(e) => panic!("creating a group on {dev} ({controller:?}): {e}"),
        };
        let text = std::fs::read_to_string(rec.cgroup.join(limit_file(controller))).unwrap();
        assert!(text.contains(&dev) && text.contains("123"), "{text}");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        add_process(&rec, child.id()).unwrap();
        let procs = std::fs::read_to_string(rec.cgroup.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == child.id().to_string()),
            "{procs}"
        );
        remove(&rec).unwrap();
        assert!(!rec.cgroup.exists());
        child.kill().unwrap();
        child.wait().unwrap();
        remove(&rec).unwrap();
    }
}
