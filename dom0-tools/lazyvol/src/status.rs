//! What `status` reports, from an open volume's memory or from disk.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::meta::{Layout, VolumeKind, VolumeLayout, VolumeMeta};
use crate::region_map::RegionMap;
use crate::volume::Shared;

/// The state of one volume, as `dbfork volume status --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub name: String,
    pub kind: VolumeKind,
    /// Blocks (lazy clones over NBD) or a directory tree (extents shared).
    #[serde(default)]
    pub layout: VolumeLayout,
    pub size: u64,
    pub region_size: u64,
    /// Bytes held by layers this volume owns (= size once independent).
    pub hydrated_bytes: u64,
    pub on_demand_fetches: u64,
    pub background_fetches: u64,
    pub fetched_bytes: u64,
    /// Measured background hydration rate, bytes/s (0 when idle or not open).
    pub background_rate: u64,
    /// Seconds until fully hydrated at the measured rate, when known.
    pub eta_secs: Option<u64>,
    /// The snapshot whose layers this volume still reads through.
    pub depends_on: Option<String>,
    pub independent: bool,
    /// The process holding the volume open read-write, if any.
    pub open_by_pid: Option<u32>,
}

/// Side file refreshed at each commit, for other processes' `status`. Not
/// crash-critical: counters and the map are authoritative in the region map.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Stats {
    pub pid: Option<u32>,
    pub background_rate: u64,
}

pub(crate) fn write_stats(shared: &Shared, open: bool) {
    let stats = Stats {
        pid: open.then(std::process::id),
        background_rate: shared.measured_rate.load(Ordering::Acquire),
    };
    let path = shared.layout.volume_stats(&shared.name);
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(&stats).expect("stats serialise");
    let res = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = res {
        tracing::debug!(%e, "could not write {}", path.display());
    }
}

pub(crate) fn read_stats(layout: &Layout, name: &str) -> Option<Stats> {
    let bytes = std::fs::read(layout.volume_stats(name)).ok()?;
    let s: Stats = serde_json::from_slice(&bytes).ok()?;
    Some(Stats {
        pid: s.pid.filter(|&p| process_alive(p)),
        ..s
    })
}

/// A process that exists and is not a zombie (a killed export whose parent has not
/// reaped it yet holds nothing open any more).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn eta(remaining: u64, rate: u64) -> Option<u64> {
    if remaining == 0 {
        Some(0)
    } else if rate > 0 {
        Some(remaining.div_ceil(rate))
    } else {
        None
    }
}

pub(crate) fn live_status(shared: &Shared) -> VolumeStatus {
    let st = shared.stack.read();
    let top = st.top();
    let region_size = top.map.region_size();
    let hydrated_bytes = if st.dependent() {
        (shared.hydrated.load(Ordering::Acquire) * region_size).min(shared.size)
    } else {
        shared.size
    };
    let c = top.map.counters();
    let rate = shared.measured_rate.load(Ordering::Acquire);
    VolumeStatus {
        name: shared.name.clone(),
        kind: shared.kind,
        layout: VolumeLayout::Blocks,
        size: shared.size,
        region_size,
        hydrated_bytes,
        on_demand_fetches: c.on_demand_fetches,
        background_fetches: c.background_fetches,
        fetched_bytes: c.fetched_bytes,
        background_rate: rate,
        eta_secs: eta(shared.size - hydrated_bytes, rate),
        depends_on: st.depends_on.clone(),
        independent: !st.dependent(),
        open_by_pid: (!shared.read_only).then(std::process::id),
    }
}

pub(crate) fn disk_status(layout: &Layout, name: &str, vm: &VolumeMeta) -> Result<VolumeStatus> {
    if vm.layout == VolumeLayout::Directory {
        // A tree shares extents with its origin: complete from the start.
        let size = crate::directory::apparent_size(&layout.directory(name));
        return Ok(VolumeStatus {
            name: name.to_string(),
            kind: vm.kind,
            layout: VolumeLayout::Directory,
            size,
            region_size: 0,
            hydrated_bytes: size,
            on_demand_fetches: 0,
            background_fetches: 0,
            fetched_bytes: 0,
            background_rate: 0,
            eta_secs: Some(0),
            depends_on: None,
            independent: true,
            open_by_pid: None,
        });
    }
    let own: Vec<RegionMap> = vm.layers[vm.own_from..]
        .iter()
        .map(|id| RegionMap::load(&layout.layer_dir(id)))
        .collect::<Result<_>>()?;
    let top = own.last().expect("a volume has at least one layer");
    let region_size = top.region_size();
    let hydrated_bytes = if vm.dependent() {
        let n = (0..top.regions())
            .filter(|&r| own.iter().any(|m| m.is_present(r)))
            .count() as u64;
        (n * region_size).min(vm.size)
    } else {
        vm.size
    };
    let c = top.counters();
    let stats = read_stats(layout, name).unwrap_or_default();
    let rate = if stats.pid.is_some() {
        stats.background_rate
    } else {
        0
    };
    Ok(VolumeStatus {
        name: name.to_string(),
        kind: vm.kind,
        layout: VolumeLayout::Blocks,
        size: vm.size,
        region_size,
        hydrated_bytes,
        on_demand_fetches: c.on_demand_fetches,
        background_fetches: c.background_fetches,
        fetched_bytes: c.fetched_bytes,
        background_rate: rate,
        eta_secs: eta(vm.size - hydrated_bytes, rate),
        depends_on: vm.depends_on.clone(),
        independent: !vm.dependent(),
        open_by_pid: stats.pid,
    })
}
