//! The store's metadata: which volumes exist and which layers each one stacks. One
//! JSON file, replaced atomically, changed only under the store's exclusive flock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, FileLock, LockMode};

/// What kind of volume a name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// Created empty or imported; writable.
    Volume,
    /// Read-only, frozen at the moment it was taken.
    Snapshot,
    /// Writable, lazily hydrated from a snapshot.
    Clone,
}

/// What a volume is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeLayout {
    /// A stack of block layers with region maps: snapshots and lazy clones of any
    /// file system, served over NBD.
    #[default]
    Blocks,
    /// A directory tree on the store's own file system; snapshots and clones share
    /// extents (see `directory.rs`).
    Directory,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct VolumeMeta {
    pub kind: VolumeKind,
    #[serde(default)]
    pub layout: VolumeLayout,
    pub size: u64,
    pub region_size: u64,
    /// Layer ids, bottom first. The last one is the writable top (for snapshots: the
    /// frozen top).
    pub layers: Vec<String>,
    /// Index of the first layer this volume owns; layers below it belong to the
    /// snapshot named by `depends_on`. 0 = independent.
    pub own_from: usize,
    pub depends_on: Option<String>,
    pub hydrate: bool,
    pub rate: Option<u64>,
}

impl VolumeMeta {
    pub fn dependent(&self) -> bool {
        self.own_from > 0
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct StoreMeta {
    pub version: u32,
    pub next_layer: u64,
    pub volumes: BTreeMap<String, VolumeMeta>,
}

impl StoreMeta {
    pub fn volume(&self, name: &str) -> Result<&VolumeMeta> {
        self.volumes
            .get(name)
            .ok_or_else(|| Error::UnknownVolume(name.to_string()))
    }

    pub fn volume_mut(&mut self, name: &str) -> Result<&mut VolumeMeta> {
        self.volumes
            .get_mut(name)
            .ok_or_else(|| Error::UnknownVolume(name.to_string()))
    }

    pub fn allocate_layer_id(&mut self) -> String {
        self.next_layer += 1;
        format!("L{:08}", self.next_layer)
    }

    /// Names of the volumes that still need `name`'s layers to serve reads.
    pub fn dependents(&self, name: &str) -> Vec<String> {
        self.volumes
            .iter()
            .filter(|(_, v)| v.depends_on.as_deref() == Some(name))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn referenced_layers(&self) -> std::collections::BTreeSet<String> {
        self.volumes
            .values()
            .flat_map(|v| v.layers.iter().cloned())
            .collect()
    }
}

/// Paths inside a store root.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn meta(&self) -> PathBuf {
        self.root.join("store.json")
    }
    pub fn store_lock(&self) -> PathBuf {
        self.root.join("store.lock")
    }
    pub fn reserve(&self) -> PathBuf {
        self.root.join("reserve")
    }
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn layer_dir(&self, id: &str) -> PathBuf {
        self.layers_dir().join(id)
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// Where directory volumes keep their trees.
    pub fn directories(&self) -> PathBuf {
        self.root.join("dirs")
    }
    pub fn directory(&self, name: &str) -> PathBuf {
        self.directories().join(name)
    }
    /// The per-name open lock. Never deleted: a process blocked on an unlinked lock
    /// file would otherwise believe it holds the lock of a re-created name.
    pub fn volume_lock(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(format!("{name}.lock"))
    }
    pub fn volume_stats(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(format!("{name}.stats.json"))
    }
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// Checks what serde cannot: names, sizes and layer indices that the engine relies
/// on (a hand-edited or damaged file must give an error, not a panic).
fn validate(meta: &StoreMeta) -> std::result::Result<(), String> {
    let layer_ok = |id: &str| {
        id.len() > 1 && id.starts_with('L') && id[1..].bytes().all(|b| b.is_ascii_digit())
    };
    for (name, v) in &meta.volumes {
        validate_name(name).map_err(|e| e.to_string())?;
        let bad = |what: &str| Err(format!("volume {name:?}: {what}"));
        if v.layout == VolumeLayout::Directory {
            // A tree on the file system: no layers, nothing it depends on.
            if !v.layers.is_empty() || v.own_from != 0 || v.depends_on.is_some() {
                return bad("a directory volume with layers or a dependency");
            }
            continue;
        }
        if v.size == 0 {
            return bad("size 0");
        }
        if crate::store::validate_region_size(v.region_size).is_err() {
            return bad("invalid region size");
        }
        if v.layers.is_empty() || !v.layers.iter().all(|l| layer_ok(l)) {
            return bad("missing or malformed layer ids");
        }
        if v.own_from >= v.layers.len() {
            return bad("own_from past the top layer");
        }
        if (v.own_from > 0) != v.depends_on.is_some() {
            return bad("dependency and own_from disagree");
        }
        if let Some(d) = &v.depends_on {
            validate_name(d).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

pub(crate) fn read_meta(layout: &Layout) -> Result<StoreMeta> {
    let path = layout.meta();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let meta: StoreMeta =
                serde_json::from_slice(&bytes).map_err(|source| Error::BadJson {
                    path: path.clone(),
                    source,
                })?;
            validate(&meta).map_err(|reason| Error::Corrupt { path, reason })?;
            Ok(meta)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreMeta {
            version: 1,
            ..Default::default()
        }),
        Err(e) => Err(e).ctx(|| format!("reading {}", path.display())),
    }
}

/// Size of the space reserve kept next to the metadata.
const RESERVE_BYTES: u64 = 256 * 1024;

/// Writes the metadata. On a full file system the reserve file is given up and the
/// write retried, so that `delete` (which must record the change before it can free
/// any layer) still works when volumes have filled the disk.
pub(crate) fn write_meta(layout: &Layout, meta: &StoreMeta) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(meta).expect("metadata serialises");
    let path = layout.meta();
    match fsutil::write_atomic(&path, &bytes) {
        Err(e) if crate::error::is_enospc(&e) && std::fs::remove_file(layout.reserve()).is_ok() => {
            tracing::warn!("file system full: released the metadata reserve");
            fsutil::write_atomic(&path, &bytes)
        }
        other => other,
    }
    .ctx(|| format!("writing {}", path.display()))
}

/// Re-creates the reserve file if it is missing (best effort).
pub(crate) fn ensure_reserve(layout: &Layout) {
    let path = layout.reserve();
    if path.exists() {
        return;
    }
    let res = (|| {
        let f = std::fs::File::create(&path)?;
        fsutil::allocate(&f, RESERVE_BYTES)
    })();
    if let Err(e) = res {
        tracing::debug!(%e, "no metadata reserve");
        let _ = std::fs::remove_file(&path);
    }
}

/// Runs `f` on the metadata under the exclusive store lock and persists the result if
/// `f` succeeds.
pub(crate) fn with_meta_mut<T>(
    layout: &Layout,
    f: impl FnOnce(&mut StoreMeta) -> Result<T>,
) -> Result<T> {
    let _lock = lock_store(layout, LockMode::Exclusive)?;
    let mut meta = read_meta(layout)?;
    let out = f(&mut meta)?;
    write_meta(layout, &meta)?;
    Ok(out)
}

pub(crate) fn lock_store(layout: &Layout, mode: LockMode) -> Result<FileLock> {
    let p = layout.store_lock();
    FileLock::acquire(&p, mode).ctx(|| format!("locking {}", p.display()))
}

pub(crate) fn read_meta_shared(layout: &Layout) -> Result<StoreMeta> {
    let _lock = lock_store(layout, LockMode::Shared)?;
    read_meta(layout)
}

pub(crate) fn ensure_dir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))
}
