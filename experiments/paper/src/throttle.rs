//! Which disk a native replica's reads go to, for its read limit (dbfork's own
//! replicas are limited on their volume's device by `dbfork clone --read-iops`).

use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
