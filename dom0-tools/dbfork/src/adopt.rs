//! `dbfork source adopt`: forking a MariaDB server the operator already runs (Debian's
//! `mariadb` service, say). Built so far: the preflight, which reads the server (root
//! over its socket, nothing changed) and says everything that would keep an online
//! adoption from working, each with its fix. The copy into a volume, the base
//! instance replicating from the server, and take-over are not built yet.

use crate::ctx::Ctx;
use crate::error::Result;
use dbinstance::external::{ExternalServer, ServerFacts};
use std::path::Path;

/// What the store says about an adoption, besides the server itself.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    /// server_ids of the store's instances, with their names.
    pub server_ids: Vec<(String, u32)>,
    /// Bytes free on the store's file system.
    pub free_bytes: u64,
}

/// Privileges the session needs on the operator's server: mariadb-backup's
/// (`RELOAD`, `PROCESS`, `LOCK TABLES`, `BINLOG MONITOR`) and what creating the
/// replication account takes (`CREATE USER`, and granting `REPLICATION SLAVE`).
const NEEDED: [&str; 5] = [
    "RELOAD",
    "PROCESS",
    "LOCK TABLES",
    "BINLOG MONITOR",
    "CREATE USER",
];

/// Everything that keeps `facts`' server from being adopted into `store`, each a
/// sentence naming the problem and the fix; empty when nothing does.
pub fn refusals(facts: &ServerFacts, store: &StoreView) -> Vec<String> {
    let mut out = Vec::new();
    if !facts.is_mariadb() {
        out.push(format!(
            "the server is not MariaDB ({} {}): only MariaDB is supported yet",
            facts.version, facts.version_comment
        ));
    }
    if !facts.log_bin {
        out.push(
            "its binary log is off, so no replica can follow it: set log_bin (e.g. \
             log_bin = mysql-bin in its [mariadbd] section) and restart the server"
                .into(),
        );
    }
    // MariaDB itself turns a server_id of 0 into 1; a MySQL server or another fork
    // may still report it.
    if facts.server_id == 0 {
        out.push(
            "its server_id is 0, which turns replication off: set server_id to a number no \
             other server of yours uses and restart the server"
                .into(),
        );
    } else if let Some((name, _)) = store
        .server_ids
        .iter()
        .find(|(_, id)| *id == facts.server_id)
    {
        out.push(format!(
            "its server_id {} is dbfork instance {name}'s: set another server_id on the \
             server (and restart it)",
            facts.server_id
        ));
    }
    let (privs, grant_option) = facts.global_privileges();
    let all = privs.iter().any(|p| p == "ALL PRIVILEGES");
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|n| {
            // BINLOG MONITOR was REPLICATION CLIENT before MariaDB 10.5; SUPER covers it.
            !all && !privs.iter().any(|p| {
                p == n || (*n == "BINLOG MONITOR" && (p == "REPLICATION CLIENT" || p == "SUPER"))
            })
        })
        .collect();
    if !missing.is_empty() || !grant_option {
        let mut what: Vec<&str> = missing;
        if !grant_option {
            what.push("GRANT OPTION");
        }
        out.push(format!(
            "the session lacks {} on *.*: adopt as root over the server's socket (Debian's \
             root logs in there by unix_socket), or grant them",
            what.join(", ")
        ));
    }
    // The copy takes the data and room for the redo log the copy carries.
    let needed = facts.data_bytes + facts.data_bytes / 10 + (64 << 20);
    if store.free_bytes < needed {
        out.push(format!(
            "the store has {} free, a copy of the server's data needs about {}: free space \
             there or use a store (--store) on a larger file system",
            crate::units::human(store.free_bytes),
            crate::units::human(needed)
        ));
    }
    out
}

/// Reads the server at `socket` and what the store holds, and returns the refusals.
pub fn preflight(ctx: &Ctx, socket: &Path) -> Result<(ServerFacts, Vec<String>)> {
    let facts = ExternalServer::new(socket).facts()?;
    let server_ids = ctx
        .registry()
        .list()?
        .into_iter()
        .map(|r| (r.name, r.config.server_id))
        .collect();
    let view = StoreView {
        server_ids,
        free_bytes: ctx.free_bytes()?,
    };
    let refusals = refusals(&facts, &view);
    Ok((facts, refusals))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian bookworm's MariaDB as its service runs it, binlog turned on.
    fn debian() -> ServerFacts {
        ServerFacts {
            version: "10.11.6-MariaDB-0+deb12u1-log".into(),
            version_comment: "Debian 12".into(),
            log_bin: true,
            server_id: 1,
            port: 3306,
            datadir: "/var/lib/mysql/".into(),
            innodb_use_native_aio: true,
            grants: vec![
                "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` IDENTIFIED VIA \
                 mysql_native_password USING 'invalid' OR unix_socket WITH GRANT OPTION"
                    .into(),
                "GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION".into(),
            ],
            data_bytes: 100 << 20,
        }
    }

    fn roomy() -> StoreView {
        StoreView {
            server_ids: vec![("db".into(), 2)],
            free_bytes: 10 << 30,
        }
    }

    #[test]
    fn debians_server_with_its_binlog_on_is_adoptable() {
        assert_eq!(refusals(&debian(), &roomy()), Vec::<String>::new());
    }

    #[test]
    fn each_problem_is_named_with_its_fix() {
        // A change to Debian's server or the store, and what its refusal must say.
        type Case = (Box<dyn Fn(&mut ServerFacts, &mut StoreView)>, &'static str);
        let cases: Vec<Case> = vec![
            (Box::new(|f, _| f.log_bin = false), "set log_bin"),
            (Box::new(|f, _| f.server_id = 0), "server_id is 0"),
            (
                Box::new(|_, s| s.server_ids.push(("r9".into(), 1))),
                "dbfork instance r9's",
            ),
            (
                Box::new(|f, _| {
                    f.version = "8.0.36".into();
                    f.version_comment = "MySQL Community Server - GPL".into();
                }),
                "only MariaDB",
            ),
            (Box::new(|_, s| s.free_bytes = 50 << 20), "free space there"),
            (
                Box::new(|f, _| {
                    f.grants = vec!["GRANT RELOAD, PROCESS ON *.* TO `ops`@`localhost`".into()]
                }),
                "lacks LOCK TABLES, BINLOG MONITOR, CREATE USER, GRANT OPTION",
            ),
        ];
        for (change, expect) in cases {
            let (mut f, mut s) = (debian(), roomy());
            change(&mut f, &mut s);
            let r = refusals(&f, &s);
            assert_eq!(r.len(), 1, "{r:?}");
            assert!(r[0].contains(expect), "{r:?} lacks {expect:?}");
        }
    }

    #[test]
    fn older_names_and_narrower_grants_count() {
        let mut f = debian();
        f.grants = vec![
            "GRANT RELOAD, PROCESS, LOCK TABLES, REPLICATION CLIENT, CREATE USER ON *.* TO \
             `ops`@`localhost` WITH GRANT OPTION"
                .into(),
            // Grants on one database do not count for the server.
            "GRANT ALL PRIVILEGES ON `app`.* TO `ops`@`localhost`".into(),
        ];
        assert_eq!(refusals(&f, &roomy()), Vec::<String>::new());
        f.grants.remove(0);
        assert_eq!(refusals(&f, &roomy()).len(), 1);
    }
}
