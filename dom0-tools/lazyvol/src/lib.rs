//! lazyvol: the volume engine of dbfork. Volumes are stacks of sparse layers with
//! persisted region maps; snapshots are instant (redirect-on-write: the top layer is
//! frozen and a new one stacked on it); clones are instant and hydrate lazily from
//! their snapshot, on demand and in the background, with dm-clone's crash rules.
//!
//! Control plane: [`Store`]. Data plane: [`Volume`] (thread-safe IO methods shaped
//! like nbd-export's `BlockDevice`). Durability rules: `region_map.rs`.

mod bitmap;
mod copy_up;
mod directory;
mod error;
mod fsutil;
mod hydrator;
mod import;
mod layer;
mod meta;
mod region_map;
mod stack;
mod status;
mod store;
mod volume;

pub use error::{Error, Result};
pub use import::{
    chown_tree, copy_tree, tree_bytes, tree_bytes_of, ImportMethod, ImportReport, TreeCopy,
};
pub use meta::{VolumeKind, VolumeLayout};
pub use region_map::Counters;
pub use status::VolumeStatus;
pub use store::{CloneOptions, Store, DEFAULT_REGION_SIZE, MAX_REGION_SIZE};
pub use volume::{OpenOptions, Volume};

/// Entry points for the fuzz targets in `fuzz/` and the matching random-input tests.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a region map file; Ok((size, region_size, counters, bitmap length)).
    pub fn parse_region_map(
        bytes: &[u8],
    ) -> std::result::Result<(u64, u64, crate::Counters, usize), String> {
        crate::region_map::decode(bytes).map(|(s, r, c, b)| (s, r, c, b.len()))
    }

    /// Writes `bytes` as the metadata of a fresh store, then opens it, lists it and
    /// opens every listed volume.
    pub fn open_store_with_metadata(bytes: &[u8]) -> crate::Result<()> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lazyvol-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("store.json"), bytes).expect("write metadata");
        let res = (|| {
            let store = crate::Store::open(&dir)?;
            for st in store.list()? {
                let _ = store.open_volume(&st.name);
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        res
    }
}
