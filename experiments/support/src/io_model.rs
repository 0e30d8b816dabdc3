//! The slow-disk model of an experiment: one blkio group (cgroup v1) that the caller
//! put the whole run in (the experiment and everything it starts inherit it), limited
//! like a 7200 rpm disk on the store's device while measuring, and unlimited while a
//! dataset is prepared (setup, not what is measured). Limiting every process of the
//! run, not one side, is what makes a figure about slow storage fair to both paths.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("setting the IO model's limit in {path}")]
pub struct IoModelError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct IoModel {
    pub group: PathBuf,
    /// "MAJ:MIN" of the limited device.
    pub device: String,
    pub iops: u32,
    pub bps: u64,
}

impl IoModel {
    fn set(&self, iops: u64, bps: u64) -> Result<(), IoModelError> {
        for (file, v) in [
            ("blkio.throttle.read_iops_device", iops),
            ("blkio.throttle.write_iops_device", iops),
            ("blkio.throttle.read_bps_device", bps),
            ("blkio.throttle.write_bps_device", bps),
        ] {
            let path = self.group.join(file);
            // 0 removes the limit.
            std::fs::write(&path, format!("{} {v}\n", self.device))
                .map_err(|source| IoModelError { path, source })?;
        }
        Ok(())
    }

    /// The disk is slow from now on.
    pub fn on(&self) -> Result<(), IoModelError> {
        self.set(u64::from(self.iops), self.bps)
    }

    /// The disk is as fast as it is.
    pub fn off(&self) -> Result<(), IoModelError> {
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

/// The command-line options of the slow-disk model, shared by the experiments.
#[derive(Clone, Debug, clap::Args)]
pub struct HddArgs {
    /// A blkio cgroup (v1) this run was started in: limited like a slow disk on
    /// --hdd-device while measuring, unlimited while a dataset is prepared.
    #[arg(long, requires = "hdd_device")]
    pub hdd_group: Option<PathBuf>,
    /// "MAJ:MIN" of the store's disk for --hdd-group.
    #[arg(long, requires = "hdd_group")]
    pub hdd_device: Option<String>,
    /// Read and write IOPS of the model, each way (a 7200 rpm disk: 150).
    #[arg(long, default_value_t = 150)]
    pub hdd_iops: u32,
    /// Bytes per second of the model, each way.
    #[arg(long, default_value_t = 150 << 20)]
    pub hdd_bps: u64,
}

impl HddArgs {
    /// The model, if a group and a device were given.
    pub fn model(&self) -> Option<IoModel> {
        match (&self.hdd_group, &self.hdd_device) {
            (Some(group), Some(device)) => Some(IoModel {
                group: group.clone(),
                device: device.clone(),
                iops: self.hdd_iops,
                bps: self.hdd_bps,
            }),
            _ => None,
        }
    }
}
