//! The persisted region map of one layer: which regions hold data in this layer, and
//! the hydration counters. Everything about durability lives here, behind a handful of
//! calls (`is_present`, `mark_present`, `commit`), the way dm-clone keeps its metadata
//! apart from its target. The data path never writes the map file itself.
//!
//! # Commit rules (read these before changing anything below)
//!
//! 1. A bit is set in the live map only after the region's data has been written to
//!    the layer's data file (the `pwrite` returned). Callers guarantee this; it is the
//!    only way a bit gets set (`mark_present`).
//! 2. `commit` captures the counters, then the live bits, THEN fdatasyncs the data
//!    file, THEN writes the map atomically (tmp + fsync + rename + fsync dir). Every
//!    captured bit was set after its data write (rule 1), so that data write preceded
//!    the fdatasync: a bit is never persisted before its data is durable. Bits set
//!    after the capture go to the next commit (the dirty flag is cleared before the
//!    capture, so it cannot be lost).
//! 3. Counters are bumped after the bit they count is set, and captured before the
//!    bits, so persisted counters never count a region the persisted map lacks.
//! 4. A region absent from the persisted map is never read from this layer after a
//!    crash, so torn or uncommitted data in the file is harmless; the first write to
//!    such a region rewrites the whole region (copy-up) before its bit is set again.
//! 5. Bits are never cleared. A frozen layer (below some top) never changes again.
//! 6. If writing the map fails (ENOSPC, EIO), the old map stays in place (atomic
//!    replace) and the dirty flag is restored, so the next commit retries.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::bitmap::AtomicBitmap;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;

const MAGIC: &[u8; 8] = b"LZVMAP01";
const HEADER_LEN: usize = 8 + 8 * 6;

/// Persisted hydration counters, carried from layer to layer when a volume's top is
/// replaced by a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Regions copied from the origin because a client read or partially wrote them.
    pub on_demand_fetches: u64,
    /// Regions copied from the origin by the background hydrator.
    pub background_fetches: u64,
    /// Bytes copied from the origin by both: regions the origin holds. A region no
    /// origin layer holds reads as zeroes, is counted as a fetch and adds nothing here.
    pub fetched_bytes: u64,
}

/// Why a region was fetched from the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FetchKind {
    OnDemand,
    Background,
}

pub(crate) struct RegionMap {
    path: PathBuf,
    size: u64,
    region_shift: u32,
    live: AtomicBitmap,
    dirty: AtomicBool,
    on_demand: AtomicU64,
    background: AtomicU64,
    fetched_bytes: AtomicU64,
    /// Serialises commits; also guards the last committed copy of the counters.
    commit_lock: Mutex<Committed>,
}

#[derive(Clone, Copy, Default)]
struct Committed {
    present: u64,
    counters: Counters,
}

/// What a reader in another process learns from a map file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapSummary {
    pub region_size: u64,
    pub counters: Counters,
}

impl RegionMap {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("map")
    }

    /// Creates and persists a new map: every region absent, or every region present
    /// (a layer whose data file is complete, e.g. an import).
    pub fn create(
        dir: &Path,
        size: u64,
        region_size: u64,
        all_present: bool,
        counters: Counters,
    ) -> Result<RegionMap> {
        let path = Self::path_in(dir);
        let regions = size.div_ceil(region_size);
        let live = AtomicBitmap::new(regions);
        if all_present {
            live.set_all();
        }
        let map = RegionMap::assemble(path, size, region_size, live, counters);
        let bytes = map.encode(counters, &map.live.to_bytes());
        fsutil::write_atomic(&map.path, &bytes)
            .ctx(|| format!("writing region map {}", map.path.display()))?;
        map.commit_lock.lock().present = map.live.count();
        Ok(map)
    }

    fn assemble(
        path: PathBuf,
        size: u64,
        region_size: u64,
        live: AtomicBitmap,
        c: Counters,
    ) -> RegionMap {
        RegionMap {
            path,
            size,
            region_shift: region_size.trailing_zeros(),
            live,
            dirty: AtomicBool::new(false),
            on_demand: AtomicU64::new(c.on_demand_fetches),
            background: AtomicU64::new(c.background_fetches),
            fetched_bytes: AtomicU64::new(c.fetched_bytes),
            commit_lock: Mutex::new(Committed {
                present: 0,
                counters: c,
            }),
        }
    }

    /// Loads the last committed map of the layer in `dir`.
    pub fn load(dir: &Path) -> Result<RegionMap> {
        let path = Self::path_in(dir);
        let bytes =
            std::fs::read(&path).ctx(|| format!("reading region map {}", path.display()))?;
        let (size, region_size, counters, bits) =
            decode(&bytes).map_err(|reason| Error::Corrupt {
                path: path.clone(),
                reason,
            })?;
        let live = AtomicBitmap::from_bytes(size.div_ceil(region_size), bits);
        let map = RegionMap::assemble(path, size, region_size, live, counters);
        map.commit_lock.lock().present = map.live.count();
        Ok(map)
    }

    /// Reads only what `status` needs from another process.
    pub fn summary(dir: &Path) -> Result<MapSummary> {
        let m = Self::load(dir)?;
        let c = *m.commit_lock.lock();
        Ok(MapSummary {
            region_size: m.region_size(),
            counters: c.counters,
        })
    }

    pub fn region_size(&self) -> u64 {
        1 << self.region_shift
    }

    pub fn region_shift(&self) -> u32 {
        self.region_shift
    }

    pub fn regions(&self) -> u64 {
        self.live.len()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this layer holds region `r`'s data (possibly not yet durable).
    pub fn is_present(&self, r: u64) -> bool {
        self.live.get(r)
    }

    /// Records that region `r`'s data has been written to the data file (rule 1: call
    /// only after the write returned). Returns true if the region was absent before.
    pub fn mark_present(&self, r: u64) -> bool {
        let newly = self.live.set(r);
        if newly {
            self.dirty.store(true, Ordering::Release);
        }
        newly
    }

    /// Counts a fetch from the origin (rule 3: after `mark_present` of that region).
    pub fn record_fetch(&self, kind: FetchKind, bytes: u64) {
        match kind {
            FetchKind::OnDemand => self.on_demand.fetch_add(1, Ordering::AcqRel),
            FetchKind::Background => self.background.fetch_add(1, Ordering::AcqRel),
        };
        self.fetched_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.dirty.store(true, Ordering::Release);
    }

    pub fn counters(&self) -> Counters {
        Counters {
            on_demand_fetches: self.on_demand.load(Ordering::Acquire),
            background_fetches: self.background.load(Ordering::Acquire),
            fetched_bytes: self.fetched_bytes.load(Ordering::Acquire),
        }
    }

    /// Regions present in the last committed map.
    pub fn committed_present(&self) -> u64 {
        self.commit_lock.lock().present
    }

    /// Makes every write to `data` that returned before this call durable, and
    /// persists every bit set before this call (see the commit rules above).
    /// Returns whether the map file was rewritten.
    pub fn commit(&self, data: &File) -> io::Result<bool> {
        let mut committed = self.commit_lock.lock();
        let was_dirty = self.dirty.swap(false, Ordering::AcqRel);
        // Rule 3: counters first, then bits.
        let counters = self.counters();
        let bits = self.live.to_bytes();
        // Rule 2: data durable before the map that claims it.
        if let Err(e) = data.sync_data() {
            self.dirty.fetch_or(was_dirty, Ordering::AcqRel);
            return Err(e);
        }
        if !was_dirty {
            return Ok(false);
        }
        let bytes = self.encode(counters, &bits);
        if let Err(e) = fsutil::write_atomic(&self.path, &bytes) {
            // Rule 6.
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        committed.present = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        committed.counters = counters;
        Ok(true)
    }

    /// Like `commit`, but does nothing (not even the fdatasync) when no bit or counter
    /// changed since the last commit: the hydrator's periodic commit.
    pub fn commit_if_dirty(&self, data: &File) -> io::Result<bool> {
        if !self.dirty.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.commit(data)
    }

    fn encode(&self, c: Counters, bits: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + bits.len() + 4);
        out.extend_from_slice(MAGIC);
        for v in [
            self.size,
            self.region_size(),
            self.regions(),
            c.on_demand_fetches,
            c.background_fetches,
            c.fetched_bytes,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(bits);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Parses a map file: (size, region_size, counters, bitmap bytes). Never panics on
/// arbitrary input.
pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<(u64, u64, Counters, &[u8]), String> {
    if bytes.len() < HEADER_LEN + 4 {
        return Err(format!(
            "{} bytes is too short for a region map",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let word = |i: usize| u64::from_le_bytes(body[8 + 8 * i..16 + 8 * i].try_into().expect("8"));
    let (size, region_size, regions) = (word(0), word(1), word(2));
    if region_size < 4096 || !region_size.is_power_of_two() {
        return Err(format!("bad region size {region_size}"));
    }
    if size == 0 || size.div_ceil(region_size) != regions {
        return Err(format!(
            "size {size} and region size {region_size} do not give {regions} regions"
        ));
    }
    let bits = &body[HEADER_LEN..];
    if bits.len() as u64 != regions.div_ceil(8) {
        return Err(format!(
            "bitmap has {} bytes for {regions} regions",
            bits.len()
        ));
    }
    let counters = Counters {
        on_demand_fetches: word(3),
        background_fetches: word(4),
        fetched_bytes: word(5),
    };
    Ok((size, region_size, counters, bits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commit_persists_only_marked_regions() {
        let dir = tempfile::tempdir().unwrap();
        let data = File::create(dir.path().join("data")).unwrap();
        let m =
            RegionMap::create(dir.path(), 10 * 4096 + 1, 4096, false, Counters::default()).unwrap();
        assert_eq!(m.regions(), 11);
        assert!(m.mark_present(3));
        m.record_fetch(FetchKind::OnDemand, 4096);
        assert!(m.commit(&data).is_ok());
        assert!(m.mark_present(10));
        // Not committed yet: a reload sees only region 3.
        let back = RegionMap::load(dir.path()).unwrap();
        assert!(back.is_present(3) && !back.is_present(10));
        assert_eq!(back.counters().on_demand_fetches, 1);
        assert!(m.commit(&data).unwrap());
        assert!(!m.commit(&data).unwrap(), "nothing new: map not rewritten");
        let back = RegionMap::load(dir.path()).unwrap();
        assert!(back.is_present(10));
        assert_eq!(back.committed_present(), 2);
    }

    #[test]
    fn corrupt_map_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        RegionMap::create(dir.path(), 1 << 20, 65536, true, Counters::default()).unwrap();
        let p = RegionMap::path_in(dir.path());
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(
            RegionMap::load(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_with_valid_magic_and_crc_never_panics(
            words in proptest::collection::vec(any::<u64>(), 6),
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut b = MAGIC.to_vec();
            for w in &words { b.extend_from_slice(&w.to_le_bytes()); }
            b.extend_from_slice(&tail);
            let crc = crc32fast::hash(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            let _ = decode(&b);
        }
    }
}
