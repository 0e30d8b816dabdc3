//! A consistent point on a live source: commits held with BACKUP STAGE BLOCK_COMMIT
//! while the caller snapshots the datadir's volume.

use std::time::{Duration, Instant};

use mysql::Conn;

use crate::error::{Error, Result};
use crate::gtid::GtidPos;
use crate::instance::Instance;
use crate::sql::{exec, gtid_var};

/// How long BLOCK_COMMIT may wait for running commits/DDL before giving up (the
/// server default, lock_wait_timeout, is a year).
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Held commit lock on a source. The backup lock belongs to this one session; it is
/// released by [`ConsistentPoint::finish`], by Drop, or by the session ending, so the
/// source is never left blocked by a lost value.
pub struct ConsistentPoint {
    conn: Option<Conn>,
    name: String,
    gtid: GtidPos,
    lsn: u64,
    held_since: Instant,
    acquire: Duration,
}

impl ConsistentPoint {
    pub fn begin(source: &Instance) -> Result<Self> {
        Self::begin_with_timeout(source, DEFAULT_ACQUIRE_TIMEOUT)
    }

    /// BACKUP STAGE START, then BLOCK_COMMIT (which passes FLUSH and BLOCK_DDL),
    /// then reads gtid_binlog_pos while commits are held. A source without binlog is
    /// refused: its replicas could not know where to start.
    pub fn begin_with_timeout(source: &Instance, acquire_timeout: Duration) -> Result<Self> {
        source.require_binlog()?;
        let name = source.name().to_string();
        let mut conn = source.conn()?;
        let secs = acquire_timeout.as_secs().max(1);
        exec(
            &mut conn,
            &name,
            &format!("SET SESSION lock_wait_timeout = {secs}"),
        )?;
        let t0 = Instant::now();
        exec(&mut conn, &name, "BACKUP STAGE START")?;
        let mut cp = ConsistentPoint {
            conn: Some(conn),
            name,
            gtid: GtidPos::default(),
            lsn: 0,
            held_since: Instant::now(),
            acquire: Duration::ZERO,
        };
        // On error from here on, Drop ends the backup stage.
        exec(cp.conn_mut(), source.name(), "BACKUP STAGE BLOCK_COMMIT").map_err(|e| match e {
            Error::Sql { source: err, .. } => Error::Sql {
                name: source.name().to_string(),
                context: format!(
                    "BACKUP STAGE BLOCK_COMMIT (waited up to {secs}s for running commits and DDL)"
                ),
                source: err,
            },
            other => other,
        })?;
        cp.held_since = Instant::now();
        cp.acquire = t0.elapsed();
        cp.gtid = gtid_var(cp.conn_mut(), source.name(), "gtid_binlog_pos")?;
        cp.lsn = innodb_lsn(cp.conn_mut(), source.name())?;
        tracing::info!(source = %cp.name, gtid = %cp.gtid, acquire_ms = cp.acquire.as_millis() as u64, "commits blocked");
        Ok(cp)
    }

    fn conn_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connection present until finish")
    }

    /// The source's binlog GTID position while commits are held: a replica cloned
    /// from a snapshot taken now starts replicating right after it.
    pub fn gtid(&self) -> &GtidPos {
        &self.gtid
    }

    /// InnoDB's durable redo LSN (`Innodb_lsn_flushed`), read under the hold and
    /// before the caller's snapshot: every record up to it is in the snapshot, so a
    /// source page whose LSN is <= this value is no newer than what the clone has after
    /// crash recovery. Use it as the replica's snapshot LSN for page sharing (reading it
    /// after the snapshot, or reading the current rather than the flushed LSN, would not
    /// be safe).
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Time spent getting the lock (waiting for in-flight commits and DDL).
    pub fn acquire_time(&self) -> Duration {
        self.acquire
    }

    /// How long commits have been held so far.
    pub fn held_for(&self) -> Duration {
        self.held_since.elapsed()
    }

    /// BACKUP STAGE END; returns how long commits were held, in milliseconds.
    pub fn finish(mut self) -> Result<u64> {
        let mut conn = self.conn.take().expect("connection present until finish");
        let res = exec(&mut conn, &self.name, "BACKUP STAGE END");
        let held = self.held_since.elapsed().as_millis() as u64;
        tracing::info!(source = %self.name, held_ms = held, "commits released");
        res.map(|_| held)
    }
}

/// `Innodb_lsn_flushed`: the end of the redo log that is durable on disk.
///
/// This, not `Innodb_lsn_current`, is the snapshot LSN of a clone. Read under the hold
/// and before the snapshot, every log record up to it is in the snapshot, so crash
/// recovery of the clone reaches at least this LSN. `Innodb_lsn_current` may include
/// records still in the server's log buffer, which the snapshot does not hold: a
/// replica told that LSN could be handed a page newer than its own recovered state.
pub fn innodb_lsn(conn: &mut Conn, name: &str) -> Result<u64> {
    use mysql::prelude::Queryable;
    let row: Option<(String, String)> = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_flushed'")
        .map_err(|e| Error::sql(name, "SHOW STATUS Innodb_lsn_flushed", e))?;
    let text = row.map(|r| r.1).unwrap_or_default();
    text.trim().parse().map_err(|_| Error::UnexpectedResult {
        name: name.to_string(),
        detail: format!("Innodb_lsn_flushed is {text:?}"),
    })
}

impl Drop for ConsistentPoint {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if let Err(e) = exec(&mut conn, &self.name, "BACKUP STAGE END") {
                // Closing the session releases the backup lock as well.
                tracing::warn!(source = %self.name, "BACKUP STAGE END on drop failed: {e}");
            }
        }
    }
}
