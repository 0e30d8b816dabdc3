//! The data plane: an open volume serving reads and writes from many threads, with
//! copy-up of absent regions and, for clones, on-demand hydration from the origin.
//!
//! Lock order: `control` -> `stack` (write) -> store flock. IO takes `stack` for
//! reading for its whole duration, so taking it for writing quiesces IO; a region
//! lock is taken only while holding `stack` for reading, and one at a time.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::copy_up::{copy_up, sole_holder};
use crate::error::{is_enospc, Error, IoContext, Result};
use crate::fsutil::{self, FileLock, LockMode};
use crate::layer::Layer;
use crate::meta::{self, Layout, VolumeKind, VolumeMeta};
use crate::region_map::{Counters, FetchKind};
use crate::stack::{read_through, segments, Segment, Stack};
use crate::status::{self, VolumeStatus};

const REGION_LOCKS: usize = 512;

pub(crate) struct HydQueue {
    pub front: VecDeque<u64>,
    pub cursor: u64,
}

pub(crate) struct Shared {
    pub layout: Layout,
    pub name: String,
    pub kind: VolumeKind,
    pub size: u64,
    pub read_only: bool,
    pub stack: RwLock<Stack>,
    pub control: Mutex<()>,
    region_locks: Box<[Mutex<()>]>,
    /// Regions held by a layer this volume owns (all of them once independent).
    pub hydrated: AtomicU64,
    pub client_io: AtomicUsize,
    pub queue: Mutex<HydQueue>,
    pub wake: Condvar,
    pub stop: AtomicBool,
    /// Background rate limit in bytes/s; 0 = unlimited.
    pub rate_limit: AtomicU64,
    /// Measured background hydration rate in bytes/s.
    pub measured_rate: AtomicU64,
    /// Try FICLONERANGE for hydration (cleared at the first "not supported").
    reflink: AtomicBool,
    _name_lock: FileLock,
}

/// Options for [`crate::Store::open_volume_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Start the background hydrator (clones only). `None` = as configured at clone
    /// time.
    pub background: Option<bool>,
}

/// An open volume. IO methods take `&self` and may be called from many threads.
/// Dropping it stops the hydrator and commits the region map (hydration progress is
/// kept; client writes not yet flushed are committed too, as a flush would).
pub struct Volume {
    shared: Arc<Shared>,
    hydrator: Mutex<Option<JoinHandle<()>>>,
}

struct IoGuard<'a>(&'a AtomicUsize);

impl Drop for IoGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a region-sized write puts into the top layer.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Bytes(&'a [u8]),
    Zeroes,
}

fn range_error(off: u64, len: u64, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("range {off}+{len} is outside the volume (size {size})"),
    )
}

impl Volume {
    pub(crate) fn open_in(layout: &Layout, name: &str, opts: OpenOptions) -> Result<Volume> {
        meta::validate_name(name)?;
        meta::ensure_dir(&layout.volumes_dir())?;
        let pre = meta::read_meta_shared(layout)?;
        let vm = pre.volume(name)?.clone();
        if vm.layout == crate::meta::VolumeLayout::Directory {
            return Err(crate::Error::NotBlockVolume {
                name: name.to_string(),
            });
        }
        let read_only = vm.kind == VolumeKind::Snapshot;
        let mode = if read_only {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        let name_lock = crate::store::name_lock(layout, name, mode)?;
        // Re-read under the name lock: the metadata may have changed meanwhile.
        let vm: VolumeMeta = {
            let _s = meta::lock_store(layout, LockMode::Shared)?;
            meta::read_meta(layout)?.volume(name)?.clone()
        };
        let top_index = vm.layers.len() - 1;
        let mut layers = Vec::with_capacity(vm.layers.len());
        for (i, id) in vm.layers.iter().enumerate() {
            let writable = !read_only && i == top_index;
            layers.push(Arc::new(Layer::open(layout.layer_dir(id), writable)?));
        }
        let top_rs = layers[top_index].map.region_size();
        for (i, l) in layers.iter().enumerate() {
            // Hydration and copy-up number regions by the top's size across every
            // layer the volume owns, so those must agree. A snapshot never hydrates
            // (reads go through each layer's own map), and one that took over the
            // layers of a deleted snapshot may own layers of different region sizes.
            let own = i >= vm.own_from && vm.kind != VolumeKind::Snapshot;
            if l.map.size() != vm.size || (own && l.map.region_size() != top_rs) {
                return Err(Error::Corrupt {
                    path: layout.layer_dir(&vm.layers[i]),
                    reason: format!(
                        "layer of {} bytes / {}-byte regions in volume {name:?} of {} bytes",
                        l.map.size(),
                        l.map.region_size(),
                        vm.size
                    ),
                });
            }
        }
        let stack = Stack {
            layers,
            own_from: vm.own_from,
            depends_on: vm.depends_on.clone(),
        };
        let hydrated = stack.count_hydrated();
        let shared = Arc::new(Shared {
            layout: layout.clone(),
            name: name.to_string(),
            kind: vm.kind,
            size: vm.size,
            read_only,
            stack: RwLock::new(stack),
            control: Mutex::new(()),
            region_locks: (0..REGION_LOCKS).map(|_| Mutex::new(())).collect(),
            hydrated: AtomicU64::new(hydrated),
            client_io: AtomicUsize::new(0),
            queue: Mutex::new(HydQueue {
                front: VecDeque::new(),
                cursor: 0,
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            rate_limit: AtomicU64::new(vm.rate.unwrap_or(0)),
            measured_rate: AtomicU64::new(0),
            reflink: AtomicBool::new(true),
            _name_lock: name_lock,
        });
        if !read_only {
            status::write_stats(&shared, true);
        }
        let vol = Volume {
            shared: shared.clone(),
            hydrator: Mutex::new(None),
        };
        let dependent = shared.stack.read().dependent();
        if dependent && !read_only {
            let background = opts.background.unwrap_or(vm.hydrate);
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hydrate-{name}"))
                .spawn(move || crate::hydrator::run(s, background))
                .ctx(|| "starting the hydrator thread".to_string())?;
            *vol.hydrator.lock() = Some(handle);
        }
        Ok(vol)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn size(&self) -> u64 {
        self.shared.size
    }

    pub fn read_only(&self) -> bool {
        self.shared.read_only
    }

    pub fn kind(&self) -> VolumeKind {
        self.shared.kind
    }

    /// Region size of the writable top layer.
    pub fn region_size(&self) -> u64 {
        self.shared.stack.read().top().map.region_size()
    }

    /// Fills `buf` with the bytes at `off`. On a clone, regions not yet hydrated are
    /// copied from the origin into the clone first (on-demand hydration).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.shared.read_at(buf, off)
    }

    /// Writes `buf` at `off`; with `fua`, durable when this returns.
    pub fn write_at(&self, buf: &[u8], off: u64, fua: bool) -> io::Result<()> {
        self.shared
            .write(Payload::Bytes(buf), off, buf.len() as u64, fua)
    }

    /// The range reads as zeroes afterwards (holes are punched where possible).
    pub fn write_zeroes(&self, off: u64, len: u64, fua: bool) -> io::Result<()> {
        self.shared.write(Payload::Zeroes, off, len, fua)
    }

    /// Discards the range; it reads as zeroes afterwards.
    pub fn trim(&self, off: u64, len: u64) -> io::Result<()> {
        self.shared.write(Payload::Zeroes, off, len, false)
    }

    /// Makes every acknowledged write durable and commits the region map.
    pub fn flush(&self) -> io::Result<()> {
        self.shared.flush()
    }

    /// Moves the regions covering `ranges` (offset, length) to the front of the
    /// hydration queue, first range first.
    pub fn prefetch(&self, ranges: &[(u64, u64)]) -> Result<()> {
        let st = self.shared.stack.read();
        if !st.dependent() || self.shared.read_only {
            return Ok(());
        }
        let top = st.top().clone();
        drop(st);
        let mut regions = Vec::new();
        for &(off, len) in ranges {
            if !matches!(off.checked_add(len), Some(e) if e <= self.shared.size) {
                return Err(Error::Io {
                    context: format!("prefetch of {}", self.shared.name),
                    source: range_error(off, len, self.shared.size),
                });
            }
            regions.extend(
                segments(off, len, top.map.region_shift(), self.shared.size).map(|s| s.region),
            );
        }
        let mut q = self.shared.queue.lock();
        for r in regions.into_iter().rev() {
            q.front.push_front(r);
        }
        drop(q);
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Changes the background rate limit (bytes/s; `None` = unlimited) for this open.
    pub fn set_rate(&self, rate: Option<u64>) {
        self.shared
            .rate_limit
            .store(rate.unwrap_or(0), Ordering::Release);
        self.shared.wake.notify_all();
    }

    /// Takes a snapshot of this open volume: IO pauses while the top layer is
    /// committed, frozen and replaced by a new empty one.
    pub fn snapshot(&self, snap: &str) -> Result<()> {
        self.shared.snapshot(snap)
    }

    /// Live status (what `Store::status` reports, from memory instead of disk).
    pub fn status(&self) -> VolumeStatus {
        status::live_status(&self.shared)
    }

    /// Hydration counters (live, including not yet committed fetches).
    pub fn counters(&self) -> Counters {
        self.shared.stack.read().top().map.counters()
    }

    /// Regions of the top layer present in its last committed map.
    pub fn committed_regions(&self) -> u64 {
        self.shared.stack.read().top().map.committed_present()
    }

    /// Hydrates every remaining region in the calling thread, ignoring the rate
    /// limit, then commits and drops the dependency. `progress(done, total)` is
    /// called after each region.
    pub fn hydrate_fully(&self, mut progress: impl FnMut(u64, u64)) -> Result<()> {
        let total = self.shared.stack.read().top().map.regions();
        for r in 0..total {
            if !self.shared.stack.read().dependent() {
                break;
            }
            self.shared
                .hydrate_region(r, FetchKind::Background)
                .ctx(|| format!("hydrating {}", self.shared.name))?;
            progress(self.shared.hydrated.load(Ordering::Acquire), total);
        }
        self.shared
            .flush()
            .ctx(|| format!("committing {}", self.shared.name))?;
        Ok(())
    }

    /// Whether the region holding byte `off` is held by a layer this volume owns
    /// (always true once independent). Does not fetch anything.
    pub fn region_hydrated(&self, off: u64) -> bool {
        let st = self.shared.stack.read();
        off < self.shared.size && st.hydrated(off >> st.top().map.region_shift())
    }

    /// Whether the volume still reads through its origin snapshot.
    pub fn dependent(&self) -> bool {
        self.shared.stack.read().dependent()
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _q = self.shared.queue.lock();
            self.shared.wake.notify_all();
        }
        if let Some(h) = self.hydrator.lock().take() {
            let _ = h.join();
        }
        if !self.shared.read_only {
            if let Err(e) = self.shared.flush() {
                tracing::warn!(volume = %self.shared.name, %e, "commit on close failed");
            }
            status::write_stats(&self.shared, false);
        }
    }
}

impl Shared {
    fn io_guard(&self) -> IoGuard<'_> {
        self.client_io.fetch_add(1, Ordering::AcqRel);
        IoGuard(&self.client_io)
    }

    fn check_range(&self, off: u64, len: u64) -> io::Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(range_error(off, len, self.size)),
        }
    }

    fn region_lock(&self, r: u64) -> parking_lot::MutexGuard<'_, ()> {
        self.region_locks[(r % REGION_LOCKS as u64) as usize].lock()
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.check_range(off, buf.len() as u64)?;
        let _io = self.io_guard();
        let st = self.stack.read();
        if !st.dependent() || self.read_only {
            return read_through(&st.layers, buf, off);
        }
        // Hydrate what is missing first, then serve the whole range in one pass
        // (adjacent pieces coalesce into single reads).
        let shift = st.top().map.region_shift();
        for seg in segments(off, buf.len() as u64, shift, self.size) {
            if !st.hydrated(seg.region) {
                match self.hydrate_locked(&st, seg.region, FetchKind::OnDemand) {
                    Ok(_) => {}
                    // No room to hydrate: serve the read from the origin anyway (the
                    // region stays unhydrated) so a full disk does not fail reads.
                    Err(e) if is_enospc(&e) => {
                        tracing::debug!(volume = %self.name, region = seg.region, "disk full; reading through");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        read_through(&st.layers, buf, off)
    }

    /// Copies region `r` from below the top into the top unless a layer this volume
    /// owns already has it. Returns the bytes copied, if this call copied it.
    pub(crate) fn hydrate_region(&self, r: u64, kind: FetchKind) -> io::Result<Option<u64>> {
        let st = self.stack.read();
        if !st.dependent() || st.hydrated(r) {
            return Ok(None);
        }
        self.hydrate_locked(&st, r, kind)
    }

    fn hydrate_locked(&self, st: &Stack, r: u64, kind: FetchKind) -> io::Result<Option<u64>> {
        let _region = self.region_lock(r);
        if st.hydrated(r) {
            return Ok(None);
        }
        let top = st.top();
        let (rlen, from_below) = match self.try_reflink(st, r)? {
            Some(rlen) => (rlen, rlen),
            None => {
                let c = copy_up(st, r, |_, _| {})?;
                (c.len, c.from_below)
            }
        };
        if top.map.mark_present(r) {
            top.map.record_fetch(kind, from_below);
            self.hydrated.fetch_add(1, Ordering::AcqRel);
        }
        Ok(Some(rlen))
    }

    /// Hydrates region `r` by sharing extents with the one lower layer that holds
    /// all of it (FICLONERANGE), where the file system can: no data is copied and
    /// no space is used. Returns None when this does not apply (region held by
    /// several layers or by none, short last region, no reflink support); the
    /// caller then copies. The first "cannot" turns the attempt off for this open.
    fn try_reflink(&self, st: &Stack, r: u64) -> io::Result<Option<u64>> {
        if !self.reflink.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let top = st.top();
        let (rstart, rlen) = top.region_bounds(r);
        if rlen % 4096 != 0 {
            return Ok(None);
        }
        let Some(src) = sole_holder(&st.layers[..st.layers.len() - 1], rstart, rlen) else {
            return Ok(None);
        };
        match fsutil::clone_range(&src.file, rstart, rlen, &top.file, rstart) {
            Ok(()) => Ok(Some(rlen)),
            Err(e) if fsutil::reflink_unsupported(&e) => {
                tracing::debug!(volume = %self.name, %e, "no reflink; hydrating by copy");
                self.reflink.store(false, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn write(&self, payload: Payload<'_>, off: u64, len: u64, fua: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.check_range(off, len)?;
        {
            let _io = self.io_guard();
            let st = self.stack.read();
            let top = st.top().clone();
            let piece = |start: u64, n: u64| match payload {
                Payload::Bytes(b) => {
                    Payload::Bytes(&b[(start - off) as usize..(start - off + n) as usize])
                }
                Payload::Zeroes => Payload::Zeroes,
            };
            // Consecutive pieces in regions the top already holds go out as one call.
            let mut run: Option<(u64, u64)> = None;
            for seg in segments(off, len, top.map.region_shift(), self.size) {
                if top.map.is_present(seg.region) {
                    run = match run {
                        Some((s, n)) => Some((s, n + seg.len)),
                        None => Some((seg.off, seg.len)),
                    };
                    continue;
                }
                if let Some((s, n)) = run.take() {
                    Self::put(&top, piece(s, n), s, n)?;
                }
                self.write_segment(&st, &top, seg, piece(seg.off, seg.len))?;
            }
            if let Some((s, n)) = run {
                Self::put(&top, piece(s, n), s, n)?;
            }
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn put(top: &Layer, payload: Payload<'_>, off: u64, len: u64) -> io::Result<()> {
        match payload {
            Payload::Bytes(b) => top.write_at(b, off),
            Payload::Zeroes => top.zero(off, len),
        }
    }

    fn write_segment(
        &self,
        st: &Stack,
        top: &Layer,
        seg: Segment,
        payload: Payload<'_>,
    ) -> io::Result<()> {
        if top.map.is_present(seg.region) {
            // The region is ours: nobody copies into it any more.
            return Self::put(top, payload, seg.off, seg.len);
        }
        // Absent in the top: the hydrator or an on-demand read may be copying this
        // region right now; serialise with them so the copy cannot land over us.
        let _region = self.region_lock(seg.region);
        if top.map.is_present(seg.region) {
            return Self::put(top, payload, seg.off, seg.len);
        }
        let from_origin = st.dependent() && !st.owned_below_top(seg.region);
        if seg.whole {
            Self::put(top, payload, seg.off, seg.len)?;
        } else {
            // Copy-up: the whole region goes to the top, old bytes merged with new,
            // so the top never holds a region that is part new, part missing.
            // (Or: share the old region's extents, then write the new bytes over.)
            if let Some(rlen) = self.try_reflink(st, seg.region)? {
                Self::put(top, payload, seg.off, seg.len)?;
                if top.map.mark_present(seg.region) && from_origin {
                    top.map.record_fetch(FetchKind::OnDemand, rlen);
                    self.hydrated.fetch_add(1, Ordering::AcqRel);
                }
                return Ok(());
            }
            let copied = copy_up(st, seg.region, |region, rstart| {
                let at = (seg.off - rstart) as usize;
                match payload {
                    Payload::Bytes(b) => region[at..at + b.len()].copy_from_slice(b),
                    Payload::Zeroes => region[at..at + seg.len as usize].fill(0),
                }
            })?;
            if top.map.mark_present(seg.region) && from_origin {
                top.map.record_fetch(FetchKind::OnDemand, copied.from_below);
                self.hydrated.fetch_add(1, Ordering::AcqRel);
            }
            return Ok(());
        }
        if top.map.mark_present(seg.region) && from_origin {
            self.hydrated.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        let dependent = {
            let st = self.stack.read();
            let top = st.top();
            if top.map.commit(&top.file)? {
                status::write_stats(self, true);
            }
            st.dependent()
        };
        if dependent {
            self.try_become_independent().map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// Drops the dependency on the origin once every region is held by a layer this
    /// volume owns. The top is committed first: the metadata must never say
    /// "independent" while the map that proves it is not durable.
    pub(crate) fn try_become_independent(&self) -> Result<bool> {
        let _c = self.control.lock();
        let (own_from, regions) = {
            let st = self.stack.read();
            (st.own_from, st.top().map.regions())
        };
        if own_from == 0 || self.hydrated.load(Ordering::Acquire) < regions {
            return Ok(false);
        }
        {
            let st = self.stack.read();
            let top = st.top();
            top.map
                .commit(&top.file)
                .ctx(|| format!("committing {}", self.name))?;
        }
        meta::with_meta_mut(&self.layout, |m| {
            let v = m.volume_mut(&self.name)?;
            v.layers.drain(..v.own_from);
            v.own_from = 0;
            v.depends_on = None;
            Ok(())
        })?;
        let mut st = self.stack.write();
        let from = st.own_from;
        st.layers.drain(..from);
        st.own_from = 0;
        st.depends_on = None;
        drop(st);
        tracing::info!(volume = %self.name, "hydrated; no longer depends on its snapshot");
        status::write_stats(self, true);
        Ok(true)
    }

    fn snapshot(&self, snap: &str) -> Result<()> {
        meta::validate_name(snap)?;
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        let _c = self.control.lock();
        let mut st = self.stack.write();
        let top = st.top().clone();
        top.map
            .commit(&top.file)
            .ctx(|| format!("committing {} before the snapshot", self.name))?;
        let region_size = top.map.region_size();
        let counters = top.map.counters();
        let new_layer = meta::with_meta_mut(&self.layout, |m| {
            if m.volumes.contains_key(snap) {
                return Err(Error::NameClash(snap.to_string()));
            }
            let vm = m.volume(&self.name)?.clone();
            let id = m.allocate_layer_id();
            let layer =
                Layer::create_empty(self.layout.layer_dir(&id), self.size, region_size, counters)?;
            m.volumes.insert(
                snap.to_string(),
                VolumeMeta {
                    kind: VolumeKind::Snapshot,
                    hydrate: false,
                    rate: None,
                    ..vm.clone()
                },
            );
            m.volume_mut(&self.name)?.layers.push(id);
            Ok(layer)
        })?;
        st.layers.push(Arc::new(new_layer));
        Ok(())
    }
}
