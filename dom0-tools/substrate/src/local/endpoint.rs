//! The database of a local domain: SQL over the server's Unix socket.

use crate::error::Result;
use crate::{CommitHold, Endpoint, WarmSet};
use dbinstance::ReplicationStatus;
use dbinstance::{ConsistentPoint, FlushReport, GtidPos, Instance, ReplicationSource};
use std::time::Duration;

pub struct SqlEndpoint {
    inst: Instance,
}

impl SqlEndpoint {
    pub fn new(inst: Instance) -> Self {
        SqlEndpoint { inst }
    }
}

impl Endpoint for SqlEndpoint {
    fn name(&self) -> &str {
        self.inst.name()
    }
    fn require_binlog(&self) -> Result<()> {
        Ok(self.inst.require_binlog()?)
    }
    fn flush_dirty_pages(&self, target: u64, timeout: Duration) -> Result<FlushReport> {
        Ok(dbinstance::flush_dirty_pages(&self.inst, target, timeout)?)
    }
    fn warm_set(&self) -> Result<WarmSet> {
        // The dump also refreshes ib_buffer_pool in the datadir, which a replica loads
        // at startup from its snapshot.
        Ok(WarmSet {
            hot: dbinstance::dump_buffer_pool(&self.inst)?,
            spaces: dbinstance::tablespace_files(&self.inst)?,
        })
    }
    fn rotate_binlog(&self) -> Result<()> {
        Ok(self.inst.exec("FLUSH BINARY LOGS")?)
    }
    fn hold_commits(&self) -> Result<Box<dyn CommitHold>> {
        Ok(Box::new(Hold(ConsistentPoint::begin(&self.inst)?)))
    }
    fn replication_source(&self) -> Result<ReplicationSource> {
        Ok(ReplicationSource::of(&self.inst)?)
    }
    fn make_replication_account(&self, user: &str) -> Result<()> {
        Ok(self.inst.make_repl_account(user)?)
    }
    fn replicate_from(&self, source: &ReplicationSource, after: &GtidPos) -> Result<()> {
        // The account travels with the datadir: a clone of this replica reaches its
        // own source as this one does.
        self.inst
            .store_repl_credentials(&dbinstance::ReplCredentials {
                user: source.user.clone(),
                password: source.password.clone(),
            })?;
        Ok(dbinstance::configure_replica(&self.inst, source, after)?)
    }
    fn resume_replication(&self, host: &str, port: u16, may_reset_binlog: bool) -> Result<()> {
        Ok(dbinstance::resume_replica(
            &self.inst,
            host,
            port,
            may_reset_binlog,
        )?)
    }
    fn redo_flush_at_commit(&self) -> Result<u32> {
        let v: Option<u64> = self
            .inst
            .query_scalar("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")?;
        Ok(v.unwrap_or(1) as u32)
    }
    fn replication_status(&self) -> Result<Option<ReplicationStatus>> {
        Ok(dbinstance::replication_status(&self.inst)?)
    }
}

struct Hold(ConsistentPoint);

impl CommitHold for Hold {
    fn gtid(&self) -> &GtidPos {
        self.0.gtid()
    }
    fn lsn(&self) -> u64 {
        self.0.lsn()
    }
    fn release(self: Box<Self>) -> Result<u64> {
        Ok(self.0.finish()?)
    }
}
