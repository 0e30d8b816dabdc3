//! HDD-like storage for a replica: a cgroup v1 blkio group that limits random read
//! IOPS on one block device, holding the replica's server process. Removed on Drop.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const BLKIO: &str = "/sys/fs/cgroup/blkio";

pub struct Throttle {
    dir: PathBuf,
}

impl Throttle {
    /// A new group limited to `read_iops` on device `maj_min` ("7:3").
    pub fn new(tag: &str, maj_min: &str, read_iops: u32) -> Result<Throttle> {
        if !Path::new(BLKIO)
            .join("blkio.throttle.read_iops_device")
            .exists()
        {
            bail!("no cgroup v1 blkio throttling at {BLKIO}; cannot model HDD-like storage");
        }
        let dir = Path::new(BLKIO).join(format!("paperrun-{}-{tag}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let t = Throttle { dir };
        std::fs::write(
            t.dir.join("blkio.throttle.read_iops_device"),
            format!("{maj_min} {read_iops}\n"),
        )
        .with_context(|| format!("limiting {maj_min} to {read_iops} read IOPS"))?;
        Ok(t)
    }

    /// Moves a process (all its threads) into the group.
    pub fn add(&self, pid: i32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), format!("{pid}\n"))
            .with_context(|| format!("moving pid {pid} into {}", self.dir.display()))
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // Processes still inside go back to the root group so the dir can go.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = std::fs::write(Path::new(BLKIO).join("cgroup.procs"), p);
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
    }
}

/// "MAJ:MIN" of a block device node.
pub fn dev_of_node(node: &str) -> Result<String> {
    let m = std::fs::metadata(node).with_context(|| format!("stat {node}"))?;
    let r = m.rdev();
    Ok(format!("{}:{}", libc::major(r), libc::minor(r)))
}

/// "MAJ:MIN" of the whole disk holding `path` (for a native replica's datadir on /).
pub fn disk_of_path(path: &Path) -> Result<String> {
    let m = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let (maj, min) = (libc::major(m.dev()), libc::minor(m.dev()));
    // blkio throttles whole disks, not partitions: walk up from the partition.
    let sys = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    if sys.join("partition").exists() {
        if let Ok(parent) = std::fs::read_to_string(sys.join("../dev")) {
            return Ok(parent.trim().to_string());
        }
    }
    Ok(format!("{maj}:{min}"))
}
