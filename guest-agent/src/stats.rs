//! Counters of what the agent saw and did, written as JSON to `DBFORK_AGENT_STATS`.

use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Default)]
        pub struct Stats { $(pub $name: AtomicU64,)* }

        #[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
        pub struct StatsSnapshot {
            pub role: String,
            pub sharing_off_reason: Option<String>,
            $(pub $name: u64,)*
        }

        impl Stats {
            pub fn snapshot(&self, role: &str, off: Option<String>) -> StatsSnapshot {
                StatsSnapshot {
                    role: role.to_string(),
                    sharing_off_reason: off,
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    // identification
    files_opened,
    files_identified,
    files_declined,
    // reads
    reads_total,
    reads_data,
    reads_page_sized,
    reads_outside_pool,
    pages_read_verified,
    pages_read_unverified,
    // source role
    pool_full_drops,
    pages_pooled,
    pages_remapped,
    pages_registered,
    register_deferred,
    register_errors,
    scans,
    scan_frames_pooled,
    // clone-time offers: frames revalidated without a copy, offers done (the copy of
    // the rest follows in the background and counts in scans)
    frames_revalidated,
    offers,
    // private frames the offer moved onto their stored copy (memory shared since)
    frames_moved,
    // replica role
    lookups,
    lookup_misses,
    lookup_errors,
    lookup_busy,
    shared,
    declined_newer,
    declined_before_snapshot,
    declined_written,
    declined_verify,
    // frames made private because their source went (Xen), at once
    frames_released,
    // frames mapped from grants made private on the server's first write to them, and
    // before a read into them (Xen; copied from `unshare` when the stats are written)
    unshared_on_write,
    unshared_before_io,
    // writes
    writes_data,
    pages_written,
    // failures
    map_errors,
    fallback_errors,
);

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl StatsSnapshot {
    /// Writes via a temp file and rename, so a reader never sees half a file.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    pub fn read_from(path: &Path) -> Option<StatsSnapshot> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}
