//! Flushing a source's dirty pages before a clone. A clone whose snapshot has few dirty
//! pages recovers quickly (little redo to apply), and clean frames are the ones a
//! replica can share (a modified frame fails its checksum). Bounded by a timeout: on a
//! source too busy to get clean, the clone proceeds anyway.
//!
//! Not on a source that is taking writes: there the flush cannot get it clean (the load
//! dirties pages as fast), and its burst of page writes queues the source's own commits
//! behind it. On a slow disk that was most of what a clone cost a source under a write
//! load (issue 12, experiments/cow-dip: 0.01-0.03x of its rate in the 10 s after the
//! clone started with the flush, 0.3x without).

use crate::sql::{exec, scalar};
use crate::{Instance, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushReport {
    pub dirty_before: u64,
    pub dirty_after: u64,
    pub ms: u64,
    /// Not flushed: the server was writing (its redo log grew by this many bytes while
    /// it was watched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_while_writing: Option<u64>,
}

/// How long the redo log is watched for writes before a flush.
const WRITE_PROBE: Duration = Duration::from_millis(300);
/// Redo growth in `WRITE_PROBE` that counts as a write load (about 50 KiB/s: a few
/// small transactions a second; an idle server writes none).
const WRITE_LOAD_BYTES: u64 = 16 << 10;

/// A numeric global status counter of the server (0 if it does not report it).
fn status_counter(c: &mut mysql::Conn, name: &str, var: &str) -> Result<u64> {
    use mysql::prelude::Queryable;
    let row: Option<(String, String)> =
        c.query_first(format!("SHOW GLOBAL STATUS LIKE '{var}'"))
            .map_err(|e| crate::Error::sql(name, format!("SHOW STATUS {var}"), e))?;
    Ok(row.and_then(|r| r.1.parse().ok()).unwrap_or(0))
}

fn dirty(c: &mut mysql::Conn, name: &str) -> Result<u64> {
    status_counter(c, name, "Innodb_buffer_pool_pages_dirty")
}

fn lsn_current(c: &mut mysql::Conn, name: &str) -> Result<u64> {
    status_counter(c, name, "Innodb_lsn_current")
}

/// When to stop waiting for a flush that no longer gets anywhere: under a constant
/// write load the dirty count falls to the level the load keeps dirty, and stays there.
/// Waiting out the whole timeout there delays every clone of a busy source for nothing.
struct FlushProgress {
    best: u64,
    best_at: Instant,
}

/// A drop smaller than this fraction of the best count so far is not progress.
const MIN_GAIN: f64 = 0.05;
/// No progress for this long: the flush has reached what the load allows.
const PLATEAU: Duration = Duration::from_millis(1500);

impl FlushProgress {
    fn new(before: u64, now: Instant) -> Self {
        FlushProgress {
            best: before,
            best_at: now,
        }
    }

    fn stalled(&mut self, dirty: u64, now: Instant) -> bool {
        if (dirty as f64) < self.best as f64 * (1.0 - MIN_GAIN) {
            self.best = dirty;
            self.best_at = now;
        }
        now.duration_since(self.best_at) >= PLATEAU
    }
}

/// Asks InnoDB to flush until at most `target` pages are dirty or `timeout` passes,
/// then restores `innodb_max_dirty_pages_pct`.
pub fn flush_dirty_pages(inst: &Instance, target: u64, timeout: Duration) -> Result<FlushReport> {
    let name = inst.name();
    let mut c = inst.conn()?;
    let t = Instant::now();
    let before = dirty(&mut c, name)?;
    if before <= target {
        return Ok(FlushReport {
            dirty_before: before,
            dirty_after: before,
            ms: 0,
            skipped_while_writing: None,
        });
    }
    let lsn0 = lsn_current(&mut c, name)?;
    // Spacing two samples of the redo log's end, not waiting for an event.
    std::thread::sleep(WRITE_PROBE);
    let grown = lsn_current(&mut c, name)?.saturating_sub(lsn0);
    if grown > WRITE_LOAD_BYTES {
        return Ok(FlushReport {
            dirty_before: before,
            dirty_after: before,
            ms: t.elapsed().as_millis() as u64,
            skipped_while_writing: Some(grown),
        });
    }
    let old: Option<f64> = scalar(&mut c, name, "SELECT @@GLOBAL.innodb_max_dirty_pages_pct")?;
    let cap: Option<u64> = scalar(&mut c, name, "SELECT @@GLOBAL.innodb_io_capacity")?;
    let cap_max: Option<u64> = scalar(&mut c, name, "SELECT @@GLOBAL.innodb_io_capacity_max")?;
    // The page cleaner paces itself by io_capacity (200 IOPS by default): lift it for
    // the flush. The server requires capacity <= capacity_max at every step, so max
    // goes up first and comes down last.
    exec(&mut c, name, "SET GLOBAL innodb_io_capacity_max = 100000")?;
    exec(&mut c, name, "SET GLOBAL innodb_io_capacity = 50000")?;
    exec(&mut c, name, "SET GLOBAL innodb_max_dirty_pages_pct = 0")?;
    let deadline = t + timeout;
    let mut after = before;
    let mut progress = FlushProgress::new(before, t);
    while Instant::now() < deadline {
        after = dirty(&mut c, name)?;
        if after <= target || progress.stalled(after, Instant::now()) {
            break;
        }
        // The page cleaner works in the background; this only spaces the polls.
        std::thread::sleep(Duration::from_millis(50));
    }
    let restore = format!(
        "SET GLOBAL innodb_max_dirty_pages_pct = {}",
        old.unwrap_or(90.0)
    );
    exec(&mut c, name, &restore)?;
    if let (Some(cap), Some(cap_max)) = (cap, cap_max) {
        exec(
            &mut c,
            name,
            &format!("SET GLOBAL innodb_io_capacity = {cap}"),
        )?;
        exec(
            &mut c,
            name,
            &format!("SET GLOBAL innodb_io_capacity_max = {cap_max}"),
        )?;
    }
    Ok(FlushReport {
        dirty_before: before,
        dirty_after: after,
        ms: t.elapsed().as_millis() as u64,
        skipped_while_writing: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_falling_count_keeps_the_flush_going_and_a_plateau_ends_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = FlushProgress::new(10_000, t0);
        // Steady progress, even slow, is never a stall.
        for (i, d) in [9000, 8000, 7000, 6000, 5000].iter().enumerate() {
            assert!(!p.stalled(*d, at(1000 * (i as u64 + 1))));
        }
        // A write load holds it near 5000: small wobbles are not progress.
        assert!(!p.stalled(4900, at(5500)));
        assert!(!p.stalled(5100, at(6000)));
        assert!(p.stalled(4950, at(6500)));
    }

    #[test]
    fn a_count_that_never_moves_stalls_after_the_plateau_time() {
        let t0 = Instant::now();
        let mut p = FlushProgress::new(300, t0);
        assert!(!p.stalled(300, t0 + PLATEAU / 2));
        assert!(p.stalled(300, t0 + PLATEAU));
    }
}
