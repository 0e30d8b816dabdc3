//! The control plane: a store directory holding volumes, snapshots and clones.
//!
//! Layout under the root:
//! - `store.json`: which names exist and which layers each stacks (atomic replace)
//! - `store.lock`: flock taken exclusively for every metadata change
//! - `layers/<id>/{data,map}`: one layer = sparse data file + region map
//! - `volumes/<name>.lock`: held while the volume is open (exclusive; shared for
//!   read-only snapshot opens); `volumes/<name>.stats.json`: pid and rate for status
//! - `dirs/<name>/`: the tree of a directory volume (see `directory.rs`)

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::path::{Path, PathBuf};

use crate::directory;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, FileLock, LockMode};
use crate::import::{self, ImportReport};
use crate::layer::{self, Layer};
use crate::meta::{self, Layout, StoreMeta, VolumeKind, VolumeLayout, VolumeMeta};
use crate::region_map::{Counters, RegionMap};
use crate::status::{self, VolumeStatus};
use crate::volume::{OpenOptions, Volume};

/// Region size used when none is given. 64 KiB: same background throughput as
/// 256 KiB and 1 MiB in our runs, 2.5-5x lower latency for the first read of a
/// region (docs/results-lazyvol.md).
pub const DEFAULT_REGION_SIZE: u64 = 64 * 1024;
/// Largest accepted region size (a region is copied in one buffer).
pub const MAX_REGION_SIZE: u64 = 64 * 1024 * 1024;

/// How a clone hydrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloneOptions {
    /// Run the background hydrator whenever the clone is open.
    pub hydrate: bool,
    /// Background rate limit in bytes/s; `None` = unlimited.
    pub rate: Option<u64>,
    /// Hydration granularity; a power of two, at least 4 KiB.
    pub region_size: u64,
}

impl Default for CloneOptions {
    fn default() -> Self {
        CloneOptions {
            hydrate: true,
            rate: None,
            region_size: DEFAULT_REGION_SIZE,
        }
    }
}

/// A store of volumes rooted at one directory.
pub struct Store {
    layout: Layout,
    reflink: std::sync::OnceLock<bool>,
}

pub(crate) fn validate_region_size(rs: u64) -> Result<()> {
    if rs >= 4096 && rs.is_power_of_two() && rs <= MAX_REGION_SIZE {
        Ok(())
    } else {
        Err(Error::InvalidRegionSize(rs))
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let layout = Layout {
            root: root.as_ref().to_path_buf(),
        };
        meta::ensure_dir(&layout.root)?;
        meta::ensure_dir(&layout.layers_dir())?;
        meta::ensure_dir(&layout.volumes_dir())?;
        // Fail early on an unreadable metadata file.
        meta::read_meta_shared(&layout)?;
        meta::ensure_reserve(&layout);
        Ok(Store {
            layout,
            reflink: std::sync::OnceLock::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    /// Creates an empty volume of `size` bytes (reads as zeroes).
    pub fn create(&self, name: &str, size: u64) -> Result<()> {
        self.create_with_region_size(name, size, DEFAULT_REGION_SIZE)
    }

    pub fn create_with_region_size(&self, name: &str, size: u64, region_size: u64) -> Result<()> {
        meta::validate_name(name)?;
        validate_region_size(region_size)?;
        if size == 0 {
            return Err(Error::InvalidSize(size));
        }
        meta::with_meta_mut(&self.layout, |m| {
            if m.volumes.contains_key(name) {
                return Err(Error::NameClash(name.to_string()));
            }
            let id = m.allocate_layer_id();
            let dir = self.layout.layer_dir(&id);
            if let Err(e) = Layer::create_empty(dir.clone(), size, region_size, Counters::default())
            {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            m.volumes
                .insert(name.to_string(), plain_volume(size, region_size, id));
            Ok(())
        })
    }

    /// Creates an empty directory volume: a tree on the store's own file system whose
    /// snapshots and clones share extents. Refused where the file system cannot share
    /// them.
    pub fn create_directory(&self, name: &str) -> Result<()> {
        meta::validate_name(name)?;
        if !self.supports_reflink() {
            return Err(Error::NoReflink {
                path: self.layout.root.clone(),
                source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
        meta::ensure_dir(&self.layout.directories())?;
        meta::with_meta_mut(&self.layout, |m| {
            if m.volumes.contains_key(name) {
                return Err(Error::NameClash(name.to_string()));
            }
            let dir = self.layout.directory(name);
            // A tree left by an operation cut short before it was recorded.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).ctx(|| format!("creating {}", dir.display()))?;
            m.volumes
                .insert(name.to_string(), directory_volume(VolumeKind::Volume));
            Ok(())
        })
    }

    /// The tree of directory volume `name`.
    pub fn directory(&self, name: &str) -> Result<PathBuf> {
        meta::validate_name(name)?;
        let m = meta::read_meta_shared(&self.layout)?;
        match m.volume(name)?.layout {
            VolumeLayout::Directory => Ok(self.layout.directory(name)),
            VolumeLayout::Blocks => Err(Error::NotDirectoryVolume {
                name: name.to_string(),
            }),
        }
    }

    /// Copies directory volume `from` to a new directory volume `to` of `kind`,
    /// sharing every file's extents; recorded only once the tree is complete.
    fn copy_directory(
        &self,
        m: &mut StoreMeta,
        from: &str,
        to: &str,
        kind: VolumeKind,
    ) -> Result<()> {
        meta::ensure_dir(&self.layout.directories())?;
        directory::reflink_tree(&self.layout.directory(from), &self.layout.directory(to))?;
        m.volumes.insert(to.to_string(), directory_volume(kind));
        Ok(())
    }

    /// Imports the raw image `file` as a new volume whose base layer is complete.
    /// Reflinks where the file system can (no data copied), copies sparsely otherwise.
    pub fn import(&self, name: &str, file: &Path) -> Result<ImportReport> {
        meta::validate_name(name)?;
        let src = File::open(file).ctx(|| format!("opening {}", file.display()))?;
        // Seeking to the end also sizes block devices (their metadata says 0).
        let size = std::io::Seek::seek(&mut &src, std::io::SeekFrom::End(0))
            .ctx(|| format!("reading the size of {}", file.display()))?;
        if size == 0 {
            return Err(Error::InvalidSize(0));
        }
        meta::with_meta_mut(&self.layout, |m| {
            if m.volumes.contains_key(name) {
                return Err(Error::NameClash(name.to_string()));
            }
            let id = m.allocate_layer_id();
            let dir = self.layout.layer_dir(&id);
            let res = (|| {
                layer::clear_orphan(&dir)?;
                meta::ensure_dir(&dir)?;
                let path = layer::data_path(&dir);
                let dst = FsOpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .ctx(|| format!("creating {}", path.display()))?;
                let report = import::clone_or_copy(&src, &dst, size)
                    .ctx(|| format!("importing {} into {}", file.display(), path.display()))?;
                dst.sync_all()
                    .ctx(|| format!("syncing {}", path.display()))?;
                RegionMap::create(&dir, size, DEFAULT_REGION_SIZE, true, Counters::default())?;
                fsutil::fsync_dir(&self.layout.layers_dir())
                    .ctx(|| "syncing the layers directory".to_string())?;
                Ok(report)
            })();
            match res {
                Ok(report) => {
                    m.volumes.insert(
                        name.to_string(),
                        plain_volume(size, DEFAULT_REGION_SIZE, id),
                    );
                    tracing::info!(volume = name, method = ?report.method, "imported");
                    Ok(report)
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    Err(e)
                }
            }
        })
    }

    /// Takes a snapshot of `vol`, which must not be open in any process (use
    /// [`Volume::snapshot`] from the process that holds it open). Metadata only.
    pub fn snapshot(&self, vol: &str, snap: &str) -> Result<()> {
        meta::validate_name(vol)?;
        meta::validate_name(snap)?;
        meta::with_meta_mut(&self.layout, |m| {
            let vm = m.volume(vol)?.clone();
            if m.volumes.contains_key(snap) {
                return Err(Error::NameClash(snap.to_string()));
            }
            if vm.layout == VolumeLayout::Directory {
                // The writer of the tree is held still by the caller.
                return self.copy_directory(m, vol, snap, VolumeKind::Snapshot);
            }
            let mode = if vm.kind == VolumeKind::Snapshot {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            };
            let _held = self.try_name_lock(vol, mode)?;
            let snap_meta = VolumeMeta {
                kind: VolumeKind::Snapshot,
                hydrate: false,
                rate: None,
                ..vm.clone()
            };
            if vm.kind != VolumeKind::Snapshot {
                // The volume's committed top becomes the snapshot's top; the volume
                // continues on a new empty layer above it.
                let top_id = vm.layers.last().expect("volume has a layer");
                let top = RegionMap::summary(&self.layout.layer_dir(top_id))?;
                let id = m.allocate_layer_id();
                Layer::create_empty(
                    self.layout.layer_dir(&id),
                    vm.size,
                    top.region_size,
                    top.counters,
                )?;
                m.volume_mut(vol)?.layers.push(id);
            }
            m.volumes.insert(snap.to_string(), snap_meta);
            Ok(())
        })
    }

    /// Creates `new`, a writable clone of the snapshot `snap`: instant, its data is
    /// hydrated lazily (on first access and, with `opts.hydrate`, in the background
    /// while it is open). A clone of a directory snapshot shares the snapshot's
    /// extents and is complete at once (`opts` do not apply).
    pub fn clone(&self, snap: &str, new: &str, opts: CloneOptions) -> Result<()> {
        meta::validate_name(snap)?;
        meta::validate_name(new)?;
        validate_region_size(opts.region_size)?;
        meta::with_meta_mut(&self.layout, |m| {
            let sm = m.volume(snap)?.clone();
            if sm.kind != VolumeKind::Snapshot {
                return Err(Error::NotASnapshot(snap.to_string()));
            }
            if m.volumes.contains_key(new) {
                return Err(Error::NameClash(new.to_string()));
            }
            if sm.layout == VolumeLayout::Directory {
                return self.copy_directory(m, snap, new, VolumeKind::Clone);
            }
            let id = m.allocate_layer_id();
            Layer::create_empty(
                self.layout.layer_dir(&id),
                sm.size,
                opts.region_size,
                Counters::default(),
            )?;
            let mut layers = sm.layers.clone();
            let own_from = layers.len();
            layers.push(id);
            m.volumes.insert(
                new.to_string(),
                VolumeMeta {
                    kind: VolumeKind::Clone,
                    layout: VolumeLayout::Blocks,
                    size: sm.size,
                    region_size: opts.region_size,
                    layers,
                    own_from,
                    depends_on: Some(snap.to_string()),
                    hydrate: opts.hydrate,
                    rate: opts.rate,
                },
            );
            Ok(())
        })
    }

    /// Deletes a name. Refused while the volume is open or while volumes that are
    /// not yet independent read through it. Frees layers no name uses any more.
    pub fn delete(&self, name: &str) -> Result<()> {
        meta::validate_name(name)?;
        let _lock = meta::lock_store(&self.layout, LockMode::Exclusive)?;
        let mut m = meta::read_meta(&self.layout)?;
        if m.volume(name)?.layout == VolumeLayout::Directory {
            // Its snapshots and clones own their trees: nothing depends on this one.
            m.volumes.remove(name);
            meta::write_meta(&self.layout, &m)?;
            let dir = self.layout.directory(name);
            std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
            let _ = std::fs::remove_file(self.layout.volume_lock(name));
            return Ok(());
        }
        let _held = self.try_name_lock(name, LockMode::Exclusive)?;
        let (snapshots, clones): (Vec<String>, Vec<String>) = m
            .dependents(name)
            .into_iter()
            .partition(|d| m.volumes[d].kind == VolumeKind::Snapshot);
        if !clones.is_empty() {
            return Err(Error::SnapshotInUse {
                snapshot: name.to_string(),
                clones,
            });
        }
        // Snapshots taken of a clone before it was independent list this snapshot's
        // layers too. They never hydrate, so instead of pinning this name forever
        // they take the layers over (layers are shared by every name listing them).
        for s in snapshots {
            let v = m.volume_mut(&s)?;
            v.own_from = 0;
            v.depends_on = None;
        }
        m.volumes.remove(name);
        meta::write_meta(&self.layout, &m)?;
        let _ = std::fs::remove_file(self.layout.volume_stats(name));
        // Its lock file goes too (held here, under the store lock: whoever opens the
        // name next makes a new one and finds the volume gone).
        let _ = std::fs::remove_file(self.layout.volume_lock(name));
        self.collect_garbage(&m);
        meta::ensure_reserve(&self.layout);
        Ok(())
    }

    /// Removes layer directories no volume references (after deletes, and orphans
    /// of operations cut short by a crash). Caller holds the store lock.
    fn collect_garbage(&self, m: &StoreMeta) {
        let used = m.referenced_layers();
        let Ok(entries) = std::fs::read_dir(self.layout.layers_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if !used.contains(&id) {
                tracing::debug!(layer = %id, "freeing unreferenced layer");
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(layer = %id, %err, "could not free layer");
                }
            }
        }
    }

    fn try_name_lock(&self, name: &str, mode: LockMode) -> Result<FileLock> {
        name_lock(&self.layout, name, mode)
    }

    /// Names of volumes that still read through `name` (a snapshot).
    pub fn dependents(&self, name: &str) -> Result<Vec<String>> {
        let m = meta::read_meta_shared(&self.layout)?;
        m.volume(name)?;
        Ok(m.dependents(name))
    }

    pub fn list(&self) -> Result<Vec<VolumeStatus>> {
        let m = meta::read_meta_shared(&self.layout)?;
        m.volumes
            .iter()
            .map(|(n, v)| status::disk_status(&self.layout, n, v))
            .collect()
    }

    /// Status from disk (committed state; the holder commits at least every second
    /// while hydrating and on every flush).
    pub fn status(&self, name: &str) -> Result<VolumeStatus> {
        meta::validate_name(name)?;
        let m = meta::read_meta_shared(&self.layout)?;
        status::disk_status(&self.layout, name, m.volume(name)?)
    }

    /// Opens a volume for IO (snapshots read-only, shared; others exclusive).
    pub fn open_volume(&self, name: &str) -> Result<Volume> {
        Volume::open_in(&self.layout, name, OpenOptions::default())
    }

    pub fn open_volume_with(&self, name: &str, opts: OpenOptions) -> Result<Volume> {
        Volume::open_in(&self.layout, name, opts)
    }

    /// Hydrates the clone `name` completely (for `delete --wait`); it must not be
    /// open elsewhere.
    pub fn hydrate_fully(&self, name: &str, progress: impl FnMut(u64, u64)) -> Result<()> {
        let vol = self.open_volume_with(
            name,
            OpenOptions {
                background: Some(false),
            },
        )?;
        vol.hydrate_fully(progress)
    }

    /// Whether the store's file system can share extents (FICLONERANGE); probed
    /// once with two scratch files.
    pub fn supports_reflink(&self) -> bool {
        *self.reflink.get_or_init(|| {
            let dir = self.layout.root.join(".reflink-probe");
            let res = (|| -> std::io::Result<()> {
                std::fs::create_dir_all(&dir)?;
                // The source of a clone must be open for reading.
                let a = FsOpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.join("a"))?;
                std::os::unix::fs::FileExt::write_all_at(&a, &[1u8; 4096], 0)?;
                let b = File::create(dir.join("b"))?;
                fsutil::clone_range(&a, 0, 4096, &b, 0)
            })();
            let _ = std::fs::remove_dir_all(&dir);
            res.is_ok()
        })
    }

    /// Region size to use for a new clone when the user gives none: 64 KiB where
    /// hydration copies (first reads cost about one region copy), 256 KiB where it
    /// shares extents (first reads cost about the same at any size; fewer ioctls).
    /// See docs/results-lazyvol.md.
    pub fn recommended_region_size(&self) -> u64 {
        if self.supports_reflink() {
            256 * 1024
        } else {
            DEFAULT_REGION_SIZE
        }
    }

    /// Path of a layer's data file (benchmarks and diagnostics).
    pub fn layer_data_path(&self, id: &str) -> PathBuf {
        layer::data_path(&self.layout.layer_dir(id))
    }
}

fn directory_volume(kind: VolumeKind) -> VolumeMeta {
    VolumeMeta {
        kind,
        layout: VolumeLayout::Directory,
        size: 0,
        region_size: 0,
        layers: Vec::new(),
        own_from: 0,
        depends_on: None,
        hydrate: false,
        rate: None,
    }
}

fn plain_volume(size: u64, region_size: u64, layer: String) -> VolumeMeta {
    VolumeMeta {
        kind: VolumeKind::Volume,
        layout: VolumeLayout::Blocks,
        size,
        region_size,
        layers: vec![layer],
        own_from: 0,
        depends_on: None,
        hydrate: false,
        rate: None,
    }
}

/// How long a volume lock with no live holder is retried before it counts as busy.
const LOCK_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes a volume's name lock. A lock held by a live process that recorded itself as
/// the holder is busy at once. A lock with no live holder on record is retried
/// briefly: a flock lives as long as any descriptor of it, and a child process
/// between fork and exec (any spawn, by any thread of the holder) or a holder that is
/// exiting keeps one for a moment after the owner let go.
pub(crate) fn name_lock(layout: &Layout, name: &str, mode: LockMode) -> Result<FileLock> {
    let p = layout.volume_lock(name);
    let deadline = std::time::Instant::now() + LOCK_SETTLE;
    loop {
        if let Some(lock) =
            FileLock::try_acquire(&p, mode).ctx(|| format!("locking {}", p.display()))?
        {
            return Ok(lock);
        }
        let pid = status::read_stats(layout, name).and_then(|s| s.pid);
        let holder_alive =
            pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if holder_alive || std::time::Instant::now() >= deadline {
            return Err(Error::VolumeBusy {
                name: name.to_string(),
                pid,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
