//! A layer: a sparse data file in the volume's address space plus its region map.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::fsutil;
use crate::region_map::{Counters, RegionMap};

pub(crate) struct Layer {
    pub file: File,
    pub map: RegionMap,
}

/// Removes a directory left under a freshly allocated layer id. Ids are allocated
/// from the persisted counter under the store lock, so such a directory can only
/// be the orphan of an operation a crash cut short before its metadata was written.
pub(crate) fn clear_orphan(dir: &Path) -> Result<()> {
    if dir.exists() {
        tracing::warn!(dir = %dir.display(), "removing an orphaned layer directory");
        std::fs::remove_dir_all(dir).ctx(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

pub(crate) fn data_path(dir: &Path) -> PathBuf {
    dir.join("data")
}

impl Layer {
    /// Creates an empty layer (every region absent) with a sparse data file.
    pub fn create_empty(
        dir: PathBuf,
        size: u64,
        region_size: u64,
        counters: Counters,
    ) -> Result<Layer> {
        clear_orphan(&dir)?;
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let path = data_path(&dir);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        file.set_len(size)
            .ctx(|| format!("sizing {}", path.display()))?;
        file.sync_all()
            .ctx(|| format!("syncing {}", path.display()))?;
        let map = RegionMap::create(&dir, size, region_size, false, counters)?;
        fsutil::fsync_dir(dir.parent().unwrap_or(&dir))
            .ctx(|| format!("syncing {}", dir.display()))?;
        Ok(Layer { file, map })
    }

    pub fn open(dir: PathBuf, writable: bool) -> Result<Layer> {
        let path = data_path(&dir);
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .ctx(|| format!("opening layer data {}", path.display()))?;
        let map = RegionMap::load(&dir)?;
        Ok(Layer { file, map })
    }

    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        fsutil::read_exact_at(&self.file, buf, off)
    }

    pub fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        fsutil::write_all_at(&self.file, buf, off)
    }

    pub fn zero(&self, off: u64, len: u64) -> io::Result<()> {
        fsutil::punch_zeroes(&self.file, off, len)
    }

    /// Bounds of region `r`: (start, length); the last region may be short.
    pub fn region_bounds(&self, r: u64) -> (u64, u64) {
        let start = r << self.map.region_shift();
        (start, (self.map.size() - start).min(self.map.region_size()))
    }
}
