//! Flushing a source's dirty pages before a clone. A clone whose snapshot has few dirty
//! pages recovers quickly (little redo to apply), and clean frames are the ones a
//! replica can share (a modified frame fails its checksum). Bounded by a timeout: on a
//! source too busy to get clean, the clone proceeds anyway.

use crate::sql::{exec, scalar};
use crate::{Instance, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushReport {
    pub dirty_before: u64,
    pub dirty_after: u64,
    pub ms: u64,
}

fn dirty(c: &mut mysql::Conn, name: &str) -> Result<u64> {
    use mysql::prelude::Queryable;
    let row: Option<(String, String)> = c
        .query_first("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
        .map_err(|e| crate::Error::sql(name, "SHOW STATUS Innodb_buffer_pool_pages_dirty", e))?;
    Ok(row.and_then(|r| r.1.parse().ok()).unwrap_or(0))
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
    while Instant::now() < deadline {
        after = dirty(&mut c, name)?;
        if after <= target {
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
    })
}
