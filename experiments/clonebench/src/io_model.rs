//! The slow-disk model of a run: one blkio group (cgroup v1) that the caller put the
//! whole run in (clonebench and everything it starts inherit it), limited like a
//! 7200 rpm disk on the store's device while measuring, and unlimited while a dataset
//! is prepared (setup, not what is measured).

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Clone, Debug, serde::Serialize)]
pub struct IoModel {
    pub group: PathBuf,
    /// "MAJ:MIN" of the limited device.
    pub device: String,
    pub iops: u32,
    pub bps: u64,
}

impl IoModel {
    fn set(&self, iops: u64, bps: u64) -> Result<()> {
        for (file, v) in [
            ("blkio.throttle.read_iops_device", iops),
            ("blkio.throttle.write_iops_device", iops),
            ("blkio.throttle.read_bps_device", bps),
            ("blkio.throttle.write_bps_device", bps),
        ] {
            let p = self.group.join(file);
            // 0 removes the limit.
            std::fs::write(&p, format!("{} {v}\n", self.device))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    }

    /// The disk is slow from now on.
    pub fn on(&self) -> Result<()> {
        self.set(u64::from(self.iops), self.bps)
    }

    /// The disk is as fast as it is.
    pub fn off(&self) -> Result<()> {
        self.set(0, 0)
    }

    /// What the results say about the model.
    pub fn describe(&self) -> String {
        format!(
            "every process of the run limited to {} read and {} write IOPS and {} MiB/s each way on device {} while measuring (cgroup {})",
            self.iops,
            self.iops,
            self.bps >> 20,
            self.device,
            self.group.display()
        )
    }
}
