//! Replica setup from a GTID position, status, catch-up and table checksums.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::Row;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gtid::GtidPos;
use crate::instance::Instance;
use crate::sql::{exec, gtid_var, quote, quote_ident};

const POLL: Duration = Duration::from_millis(50);

/// Where a replica connects to, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationSource {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl ReplicationSource {
    /// The source instance's TCP address with its stored replication account.
    pub fn of(source: &Instance) -> Result<Self> {
        let creds = source.repl_credentials()?;
        // A server listening on every address is reached on loopback.
        let host = match source.config().bind_address.as_str() {
            "" | "*" | "0.0.0.0" | "::" => "127.0.0.1".to_string(),
            b => b.to_string(),
        };
        Ok(ReplicationSource {
            host,
            port: source.config().port,
            user: creds.user,
            password: creds.password,
        })
    }
}

/// How long a new replica keeps trying to reach its source while the network does not
/// answer (a domU that just booted may lose its first packets while its interface
/// joins the bridge). A refusal or an error from the server is not retried.
pub const REACH_SOURCE_FOR: Duration = Duration::from_secs(30);

/// Whether a connection attempt failed for want of a network path (worth another
/// try), not because the source refused or answered with an error.
fn network_did_not_answer(e: &mysql::Error) -> bool {
    use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable, TimedOut};
    let kind = |k: std::io::ErrorKind| matches!(k, TimedOut | HostUnreachable | NetworkUnreachable);
    match e {
        mysql::Error::IoError(io) => kind(io.kind()),
        mysql::Error::DriverError(mysql::DriverError::ConnectTimeout) => true,
        mysql::Error::DriverError(mysql::DriverError::CouldNotConnect(Some((_, _, k)))) => kind(*k),
        _ => false,
    }
}

/// Connects to `source` as replica `name` will, trying again for up to `reach_for`
/// while the network does not answer.
pub fn connect_to_source(
    name: &str,
    source: &ReplicationSource,
    reach_for: Duration,
) -> Result<mysql::Conn> {
    // Each attempt gets at most half the window, so a silent network is asked twice.
    let per_attempt = (reach_for / 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let opts = mysql::OptsBuilder::new()
        .ip_or_hostname(Some(source.host.clone()))
        .tcp_port(source.port)
        .user(Some(source.user.clone()))
        .pass(Some(source.password.clone()))
        .prefer_socket(false)
        .tcp_connect_timeout(Some(per_attempt));
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match mysql::Conn::new(opts.clone()) {
            Ok(c) => return Ok(c),
            Err(e) if network_did_not_answer(&e) && started.elapsed() < reach_for => {
                tracing::warn!(
                    "{name}: replication source {}:{} did not answer ({e}); trying again",
                    source.host,
                    source.port
                );
                // A pause between attempts, not synchronisation: nothing to wait on.
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                let tried = if attempts > 1 {
                    format!(
                        " ({attempts} attempts in {} s)",
                        started.elapsed().as_secs()
                    )
                } else {
                    String::new()
                };
                return Err(Error::sql(
                    name,
                    format!(
                        "connect to replication source {}:{} as {}{tried}",
                        source.host, source.port, source.user
                    ),
                    e,
                ));
            }
        }
    }
}

/// Makes `replica` replicate from `source` starting right after `gtid_pos`, and sets
/// it read_only. Any replication config the datadir inherited (a clone of a replica
/// carries its parent's) is discarded first.
pub fn configure_replica(
    replica: &Instance,
    source: &ReplicationSource,
    gtid_pos: &GtidPos,
) -> Result<()> {
    let name = replica.name();
    let mut c = replica.conn()?;
    let own_id: Option<u32> = crate::sql::scalar(&mut c, name, "SELECT @@GLOBAL.server_id")?;
    // Reach the source as the replica will: bad credentials or a dead source fail
    // here with a clear error instead of as a retrying IO thread.
    let mut sc = connect_to_source(name, source, REACH_SOURCE_FOR)?;
    let source_id: Option<u32> =
        crate::sql::scalar(&mut sc, "source", "SELECT @@GLOBAL.server_id")?;
    if own_id == source_id {
        return Err(Error::InvalidConfig(format!(
            "replica {name} has the same server_id ({}) as its source; events would be skipped as its own",
            own_id.unwrap_or(0)
        )));
    }
    let source_binlog: Option<i64> =
        crate::sql::scalar(&mut sc, "source", "SELECT @@GLOBAL.log_bin")?;
    if source_binlog != Some(1) {
        return Err(Error::NoBinlog(format!("{}:{}", source.host, source.port)));
    }
    drop(sc);
    exec(&mut c, name, "STOP SLAVE")?;
    exec(&mut c, name, "RESET SLAVE ALL")?;
    // The position is the replica's whole state: durable before this returns, also on
    // a replica that fsyncs its redo once a second (its disk may die the next moment,
    // and a replica that comes back without its position would replay from nowhere).
    let durability: Option<u64> = crate::sql::scalar(
        &mut c,
        name,
        "SELECT @@GLOBAL.innodb_flush_log_at_trx_commit",
    )?;
    exec(
        &mut c,
        name,
        "SET GLOBAL innodb_flush_log_at_trx_commit = 1",
    )?;
    exec(
        &mut c,
        name,
        &format!(
            "SET GLOBAL gtid_slave_pos = {}",
            quote(&gtid_pos.to_string())
        ),
    )?;
    exec(
        &mut c,
        name,
        &format!(
            "SET GLOBAL innodb_flush_log_at_trx_commit = {}",
            durability.unwrap_or(1)
        ),
    )?;
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER={}, MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
        quote(&source.host),
        source.port,
        quote(&source.user),
        quote(&source.password)
    );
    c.query_drop(&change)
        .map_err(|e| Error::sql(name, "CHANGE MASTER TO (password elided)", e))?;
    exec(&mut c, name, "SET GLOBAL read_only = ON")?;
    exec(&mut c, name, "START SLAVE")?;
    tracing::info!(replica = name, host = %source.host, port = source.port, gtid = %gtid_pos, "replication configured");
    Ok(())
}

/// Starts a restarted replica's replication again from where it stopped: its position
/// is InnoDB's own (`gtid_slave_pos`, crash safe), so when its connection settings did
/// not survive (a crash can leave master.info or relay-log.info torn) they are set
/// again, to the source at `host:port` with the account the replica stored, and it
/// fetches from that position.
///
/// After its disk or host went down, the replica's binary log (not fsynced per
/// transaction) may hold transactions its data lost; replaying them from its position
/// would clash with them in gtid_strict_mode. With `may_reset_binlog` (no replica of
/// its own reads that log) the log is emptied first; otherwise that is an error that
/// says so.
pub fn resume_replica(
    replica: &Instance,
    host: &str,
    port: u16,
    may_reset_binlog: bool,
) -> Result<()> {
    let name = replica.name();
    let mut c = replica.conn()?;
    let slave = gtid_var(&mut c, name, "gtid_slave_pos")?;
    let binlog = gtid_var(&mut c, name, "gtid_binlog_pos")?;
    let ahead: Vec<String> = binlog
        .iter()
        .filter(|b| slave.get(b.domain).is_none_or(|s| b.seq_no > s.seq_no))
        .map(|b| format!("{}-{}-{}", b.domain, b.server_id, b.seq_no))
        .collect();
    if !ahead.is_empty() {
        if !may_reset_binlog {
            return Err(Error::InvalidConfig(format!(
                "{name}'s binary log holds {} beyond its data's position {slave} (its disk or \
                 host went down before the data was durable), and replicas of {name} read \
                 that log: destroy them and clone them again, then start {name}",
                ahead.join(",")
            )));
        }
        tracing::warn!(
            replica = name,
            binlog = %binlog,
            position = %slave,
            "the binary log is ahead of the data (a crash lost the last writes): emptying it before replication resumes"
        );
        exec(&mut c, name, "RESET MASTER")?;
    }
    match exec(&mut c, name, "START SLAVE") {
        Ok(()) => return Ok(()),
        Err(e) => tracing::warn!(
            replica = name,
            "START SLAVE failed ({e}); setting replication up again from its GTID position"
        ),
    }
    let creds = replica.repl_credentials()?;
    exec(&mut c, name, "STOP SLAVE")?;
    exec(&mut c, name, "RESET SLAVE ALL")?;
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER={}, MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
        quote(host),
        port,
        quote(&creds.user),
        quote(&creds.password)
    );
    c.query_drop(&change)
        .map_err(|e| Error::sql(name, "CHANGE MASTER TO (password elided)", e))?;
    exec(&mut c, name, "START SLAVE")
}

/// A smallest server_id not in `used` and above all of them (ids only grow, so a
/// destroyed replica's id is never reused while its events may still be around).
pub fn next_server_id(used: impl IntoIterator<Item = u32>) -> u32 {
    used.into_iter().max().unwrap_or(0).saturating_add(1).max(1)
}

/// The replica side of SHOW SLAVE STATUS, plus the GTID it has applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// "Yes", "No" or "Connecting".
    pub io_running: String,
    pub sql_running: bool,
    pub seconds_behind_master: Option<u64>,
    pub last_io_errno: u32,
    pub last_io_error: String,
    pub last_sql_errno: u32,
    pub last_sql_error: String,
    pub gtid_slave_pos: GtidPos,
    pub master_host: String,
    pub master_port: u16,
}

impl ReplicationStatus {
    /// A reason replication will not progress on its own, if any.
    pub fn broken(&self) -> Option<String> {
        if !self.sql_running || self.last_sql_errno != 0 {
            return Some(format!(
                "SQL thread {}; error {}: {}",
                if self.sql_running {
                    "running"
                } else {
                    "stopped"
                },
                self.last_sql_errno,
                self.last_sql_error
            ));
        }
        if self.io_running == "No" {
            return Some(format!(
                "IO thread stopped; error {}: {}",
                self.last_io_errno, self.last_io_error
            ));
        }
        None
    }
}

/// `None` when the instance is not configured as a replica.
pub fn replication_status(replica: &Instance) -> Result<Option<ReplicationStatus>> {
    let name = replica.name();
    let mut c = replica.conn_bounded(crate::sql::STATUS_IO_TIMEOUT)?;
    let row: Option<Row> = c
        .query_first("SHOW SLAVE STATUS")
        .map_err(|e| crate::sql::read_error(name, "SHOW SLAVE STATUS", e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let text = |col: &str| -> String {
        row.get_opt::<Option<String>, _>(col)
            .and_then(|r| r.ok())
            .flatten()
            .unwrap_or_default()
    };
    let num = |col: &str| -> Option<u64> { text(col).trim().parse().ok() };
    Ok(Some(ReplicationStatus {
        io_running: text("Slave_IO_Running"),
        sql_running: text("Slave_SQL_Running") == "Yes",
        seconds_behind_master: num("Seconds_Behind_Master"),
        last_io_errno: num("Last_IO_Errno").unwrap_or(0) as u32,
        last_io_error: text("Last_IO_Error"),
        last_sql_errno: num("Last_SQL_Errno").unwrap_or(0) as u32,
        last_sql_error: text("Last_SQL_Error"),
        gtid_slave_pos: gtid_var(&mut c, name, "gtid_slave_pos")?,
        master_host: text("Master_Host"),
        master_port: num("Master_Port").unwrap_or(0) as u16,
    }))
}

/// Waits until the replica has applied everything the source had binlogged when this
/// was called. Fails early, with the replica's error, when replication is broken.
pub fn wait_caught_up(replica: &Instance, source: &Instance, timeout: Duration) -> Result<GtidPos> {
    let target = gtid_var(
        &mut source.conn_bounded(crate::sql::STATUS_IO_TIMEOUT)?,
        source.name(),
        "gtid_binlog_pos",
    )?;
    let deadline = Instant::now() + timeout;
    let mut c = replica.conn_bounded(crate::sql::STATUS_IO_TIMEOUT)?;
    loop {
        let pos = gtid_var(&mut c, replica.name(), "gtid_slave_pos")?;
        if pos.covers(&target) {
            return Ok(pos);
        }
        match replication_status(replica)? {
            None => {
                return Err(Error::ReplicationBroken {
                    name: replica.name().to_string(),
                    detail: "not configured as a replica".into(),
                })
            }
            Some(st) => {
                if let Some(why) = st.broken() {
                    return Err(Error::ReplicationBroken {
                        name: replica.name().to_string(),
                        detail: why,
                    });
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::CatchUpTimeout {
                name: replica.name().to_string(),
                secs: timeout.as_secs(),
                replica_pos: pos.to_string(),
                source_pos: target.to_string(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// `CHECKSUM TABLE` of every base table in `schemas`, keyed "schema.table".
pub fn checksum_all_tables(
    instance: &Instance,
    schemas: &[&str],
) -> Result<BTreeMap<String, Option<u64>>> {
    let name = instance.name();
    let mut c = instance.conn()?;
    let mut out = BTreeMap::new();
    if schemas.is_empty() {
        return Ok(out);
    }
    let list: Vec<String> = schemas.iter().map(|s| quote(s)).collect();
    let sql = format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE='BASE TABLE' AND TABLE_SCHEMA IN ({}) ORDER BY 1, 2",
        list.join(",")
    );
    let tables: Vec<(String, String)> = c.query(&sql).map_err(|e| Error::sql(name, &sql, e))?;
    for (schema, table) in tables {
        let sql = format!(
            "CHECKSUM TABLE {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let row: Option<(String, Option<u64>)> =
            c.query_first(&sql).map_err(|e| Error::sql(name, &sql, e))?;
        let sum = row.and_then(|(_, s)| s);
        out.insert(format!("{schema}.{table}"), sum);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_id_grows() {
        assert_eq!(next_server_id([]), 1);
        assert_eq!(next_server_id([1, 5, 3]), 6);
        assert_eq!(next_server_id([u32::MAX]), u32::MAX);
    }

    #[test]
    fn broken_reasons() {
        let mut st = ReplicationStatus {
            io_running: "Yes".into(),
            sql_running: true,
            seconds_behind_master: Some(0),
            last_io_errno: 0,
            last_io_error: String::new(),
            last_sql_errno: 0,
            last_sql_error: String::new(),
            gtid_slave_pos: GtidPos::default(),
            master_host: "127.0.0.1".into(),
            master_port: 3306,
        };
        assert_eq!(st.broken(), None);
        st.io_running = "Connecting".into();
        assert_eq!(st.broken(), None);
        st.io_running = "No".into();
        st.last_io_error = "access denied".into();
        assert!(st.broken().unwrap().contains("access denied"));
        st.io_running = "Yes".into();
        st.sql_running = false;
        st.last_sql_errno = 1062;
        assert!(st.broken().unwrap().contains("1062"));
    }
}
