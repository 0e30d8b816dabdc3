//! `dbfork source adopt`: forking a MariaDB server the operator already runs (Debian's
//! `mariadb` service, say), online: the server keeps running untouched and stays the
//! primary. dbfork reads it (root over its socket, or the login of an option file) and
//! refuses, with the fix, what would keep the adoption from working; makes a
//! replication account there; streams a consistent copy of its data (mariadb-backup)
//! into a new volume, prepares it, and starts a base instance on it that replicates
//! from the server by GTID. The base is a source like any other: `dbfork clone` forks
//! it. Nothing on the operator's server is changed but the account; nothing of it is
//! ever stopped or removed (destroying the base names the account to drop).

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::registry::{InstanceRecord, Upstream};
use crate::source::{self, SourceOptions};
use crate::undo::Undo;
use dbinstance::external::{ExternalServer, Login, ServerFacts};
use dbinstance::{GtidPos, ReplicationSource};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where replicas of the operator's server connect: its loopback address (the base
/// runs on the same host).
const UPSTREAM_HOST: &str = "127.0.0.1";

/// The server to adopt, as the operator named it.
#[derive(Debug, Clone, Default)]
pub struct ServerArgs {
    pub socket: Option<PathBuf>,
    pub defaults_file: Option<PathBuf>,
}

impl ServerArgs {
    /// The server, with the login and socket of the option file when one is given
    /// (`--socket` wins over the file's).
    pub fn server(&self) -> Result<ExternalServer> {
        let (login, file_socket) = match &self.defaults_file {
            Some(f) => Login::from_defaults_file(f)?,
            None => (Login::default(), None),
        };
        let Some(socket) = self.socket.clone().or(file_socket) else {
            return Err(Error::AdoptUsage(
                "say which server: --socket PATH (Debian's is /run/mysqld/mysqld.sock), or \
                 a --defaults-file whose [client] names its socket"
                    .into(),
            ));
        };
        Ok(ExternalServer::with_login(&socket, login))
    }
}

/// The account the base replicates through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// dbfork makes `user`@127.0.0.1 with a password of its own.
    Made { user: String },
    /// The operator's own, with its password.
    Named { user: String, password: String },
}

impl Account {
    /// The account dbfork makes for base `name` (MariaDB's user names hold 80
    /// characters).
    pub fn made_for(name: &str) -> Account {
        let mut user = format!("dbfork_{name}");
        user.truncate(80);
        Account::Made { user }
    }

    /// `--replication-user USER --replication-password-file FILE`.
    pub fn named(user: &str, password_file: &Path) -> Result<Account> {
        let text = std::fs::read_to_string(password_file)
            .map_err(Error::io("reading the replication password", password_file))?;
        let password = text.lines().next().unwrap_or("").to_string();
        if password.is_empty() {
            return Err(Error::AdoptUsage(format!(
                "{} is empty: its first line must be the password of {user}",
                password_file.display()
            )));
        }
        Ok(Account::Named {
            user: user.to_string(),
            password,
        })
    }

    pub fn user(&self) -> &str {
        match self {
            Account::Made { user } | Account::Named { user, .. } => user,
        }
    }
}

/// What the store says about an adoption, besides the server itself.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    /// server_ids of the store's instances, with their names.
    pub server_ids: Vec<(String, u32)>,
    /// Adopted sources' upstreams: (name, server_id, port).
    pub upstreams: Vec<(String, u32, u16)>,
    /// Bytes free on the store's file system.
    pub free_bytes: u64,
    /// Whether the account dbfork would make exists on the server already.
    pub account_exists: Option<String>,
    /// Room the copy takes in the store.
    pub needed_bytes: u64,
}

/// What an adoption copies, and so what its preflight checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The server's data streamed by mariadb-backup (the server keeps running).
    Online,
    /// The whole datadir, of `bytes`, the server stopped.
    TakeOver { bytes: u64 },
}

/// Privileges the session needs on the operator's server: mariadb-backup's
/// (`RELOAD`, `PROCESS`, `LOCK TABLES`, `BINLOG MONITOR`) and what creating the
/// replication account takes (`CREATE USER`, and `REPLICATION SLAVE` with GRANT
/// OPTION to grant it).
const NEEDED: [&str; 6] = [
    "RELOAD",
    "PROCESS",
    "LOCK TABLES",
    "BINLOG MONITOR",
    "CREATE USER",
    "REPLICATION SLAVE",
];

/// Whether a server bound to `bind_address` answers on 127.0.0.1.
fn answers_on_loopback(bind_address: &str) -> bool {
    bind_address.split(',').map(str::trim).any(|a| {
        matches!(
            a,
            "" | "*" | "0.0.0.0" | "::" | "127.0.0.1" | "localhost" | "::ffff:127.0.0.1"
        )
    })
}

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
    if let Some((name, _, _)) = store
        .upstreams
        .iter()
        .find(|(_, id, port)| *id == facts.server_id && *port == facts.port)
    {
        out.push(format!(
            "it is adopted already, as {name} (which replicates from it): clone {name} \
             (dbfork clone {name} NEW), or destroy {name} first"
        ));
    }
    if !facts.log_bin {
        out.push(
            "its binary log is off, so no replica can follow it: set log_bin (e.g. \
             log_bin = mysql-bin in its [mariadbd] section) and restart the server"
                .into(),
        );
    }
    if facts.skip_networking {
        out.push(
            "it does not listen on TCP (skip_networking), and replicas connect over TCP: \
             remove skip-networking, set bind_address = 127.0.0.1 and restart the server"
                .into(),
        );
    } else if !answers_on_loopback(&facts.bind_address) {
        out.push(format!(
            "it listens on {} only, and the base replicates from 127.0.0.1: add 127.0.0.1 \
             to bind_address (or set 0.0.0.0) and restart the server",
            facts.bind_address
        ));
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
    if facts.page_size != 0 && facts.page_size != 16384 {
        out.push(format!(
            "its innodb_page_size is {}, and dbfork's page sharing reads 16 KiB pages only \
             yet: adopting it is not supported",
            facts.page_size
        ));
    }
    if facts.root_by_socket == Some(false) {
        out.push(
            "its root@localhost does not log in by unix_socket, and dbfork manages the copy \
             (which carries the server's accounts) as root over the copy's socket: let root \
             log in by unix_socket too (ALTER USER root@localhost IDENTIFIED VIA unix_socket \
             OR mysql_native_password USING PASSWORD('...'), as Debian sets it up)"
                .into(),
        );
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
            "the session ({}) lacks {} on *.*: adopt as root over the server's socket \
             (Debian's root logs in there by unix_socket), or grant them",
            facts.session_user,
            what.join(", ")
        ));
    }
    if let Some(account) = &store.account_exists {
        out.push(format!(
            "the account {account} dbfork would make exists on the server already (a base \
             adopted into another store?): drop it (DROP USER {account}), adopt under \
             another name, or name an account with --replication-user"
        ));
    }
    if store.free_bytes < store.needed_bytes {
        out.push(format!(
            "the store has {} free, a copy of the server's data needs about {}: free space \
             there or use a store (--store) on a larger file system",
            crate::units::human(store.free_bytes),
            crate::units::human(store.needed_bytes)
        ));
    }
    out
}

/// Room a copy of the server's data takes in the store: its data and room for the
/// redo log the copy carries, or its whole datadir.
fn space_needed(facts: &ServerFacts, mode: Mode) -> u64 {
    match mode {
        Mode::Online => facts.data_bytes + facts.data_bytes / 10 + (256 << 20),
        Mode::TakeOver { bytes } => bytes + bytes / 10 + (64 << 20),
    }
}

/// Reads the server and what the store holds, and returns the refusals of an adoption
/// in `mode` (a take-over makes no account while the server runs).
pub fn preflight(
    ctx: &Ctx,
    server: &ExternalServer,
    account: &Account,
    mode: Mode,
) -> Result<(ServerFacts, Vec<String>)> {
    judge(ctx, server, server.facts()?, account, mode)
}

/// The preflight's refusals for the server whose `facts` were read already.
pub(crate) fn judge(
    ctx: &Ctx,
    server: &ExternalServer,
    facts: ServerFacts,
    account: &Account,
    mode: Mode,
) -> Result<(ServerFacts, Vec<String>)> {
    let records = ctx.registry().list()?;
    let account_exists = match account {
        Account::Made { user }
            if mode == Mode::Online && server.user_exists(user, UPSTREAM_HOST)? == Some(true) =>
        {
            Some(format!("'{user}'@'{UPSTREAM_HOST}'"))
        }
        _ => None,
    };
    let view = StoreView {
        server_ids: records
            .iter()
            .map(|r| (r.name.clone(), r.config.server_id))
            .collect(),
        upstreams: records
            .iter()
            .filter_map(|r| {
                let u = r.upstream.as_ref()?;
                Some((r.name.clone(), u.server_id, u.port))
            })
            .collect(),
        free_bytes: ctx.free_bytes()?,
        account_exists,
        needed_bytes: space_needed(&facts, mode),
    };
    let refusals = refusals(&facts, &view);
    Ok((facts, refusals))
}

/// What an adoption tells its caller as it goes (a progress display).
pub trait AdoptProgress {
    /// A step begins.
    fn step(&self, what: &str);
    /// The copy begins; about `estimate` bytes will stream.
    fn copy_started(&self, estimate: u64);
    /// Bytes of the copy received so far.
    fn copied(&self, bytes: u64);
    /// The copy is in the volume.
    fn copy_done(&self, bytes: u64);
    /// Catching up: transactions the base is behind the server's position when the
    /// catch-up began.
    fn behind(&self, transactions: u64, of: u64);
    /// Whether the operator asked to stop (a signal): the work stops at the next point
    /// it can and takes back what it made.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Stops the work (with its undo) when the operator asked to, before `what`.
pub(crate) fn go_on(progress: &dyn AdoptProgress, what: &str) -> Result<()> {
    if progress.cancelled() {
        return Err(Error::Cancelled(what.into()));
    }
    Ok(())
}

/// A stream that ends with an error once the operator asked to stop.
struct Cancellable<'a, R> {
    inner: R,
    progress: &'a dyn AdoptProgress,
}

impl<R: std::io::Read> std::io::Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.progress.cancelled() {
            return Err(std::io::Error::other("cancelled by a signal"));
        }
        self.inner.read(buf)
    }
}

/// How long the catch-up lets the base fail to reach the server before it gives up.
const IO_FAILING_FOR: Duration = Duration::from_secs(60);

/// How long the catch-up waits for the base to apply anything before it gives up.
const NO_PROGRESS_FOR: Duration = Duration::from_secs(600);

/// How often the catch-up reads the base's position.
const CATCH_UP_POLL: Duration = Duration::from_millis(200);

/// About what mariadb-backup streams of the server: its datadir without its binary and
/// redo logs (the stream carries only the redo written during the copy), or its InnoDB
/// data when the datadir cannot be read.
fn copy_estimate(facts: &ServerFacts) -> u64 {
    let binlog = facts
        .log_bin_basename
        .as_ref()
        .and_then(|b| b.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    // The datadir's own redo log and binary log files are not in the copy.
    let counted = |p: &Path| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        p.parent() != Some(facts.datadir.as_path())
            || !(name.starts_with("ib_logfile")
                || binlog
                    .as_ref()
                    .is_some_and(|b| name.starts_with(b.as_str())))
    };
    lazyvol::tree_bytes_of(&facts.datadir, &counted)
        .unwrap_or(0)
        .max(facts.data_bytes)
}

/// Transactions `applied` lacks of `target`, over all replication domains.
pub fn transactions_behind(target: &GtidPos, applied: &GtidPos) -> u64 {
    target
        .iter()
        .map(|t| {
            let done = applied.get(t.domain).map_or(0, |a| a.seq_no);
            t.seq_no.saturating_sub(done)
        })
        .sum()
}

/// Adopts the server online as source `name`: the base instance, caught up with it.
/// The copy waits up to `lock_wait` for sessions holding LOCK TABLES to end.
pub fn adopt(
    ctx: &Ctx,
    name: &str,
    server: &ExternalServer,
    account: &Account,
    opts: &SourceOptions,
    lock_wait: Duration,
    progress: &dyn AdoptProgress,
) -> Result<InstanceRecord> {
    let sub = ctx.substrate();
    ctx.check_free(name)?;
    sub.preflight()?;
    progress.step("preflight");
    let (facts, refused) = preflight(ctx, server, account, Mode::Online)?;
    if !refused.is_empty() {
        return Err(Error::AdoptRefused {
            name: name.into(),
            socket: server.socket().to_path_buf(),
            refusals: refused,
        });
    }
    let port = sub.sql_port(opts.port)?;
    ctx.check_space(space_needed(&facts, Mode::Online))?;
    let doing = |what: &str| {
        let what = what.to_string();
        move |e: Error| Error::Adopt {
            name: name.into(),
            what,
            source: Box::new(e),
        }
    };
    let mut undo = Undo::new();

    go_on(progress, "making the replication account")?;
    progress.step("replication account");
    let password = match account {
        Account::Made { user } => {
            let password = dbinstance::instance::new_password();
            server
                .create_replication_account(user, UPSTREAM_HOST, &password)
                .map_err(|e| doing("making its replication account")(e.into()))?;
            let user = user.clone();
            undo.push(format!("account {user} on the server"), move || {
                Ok(server.drop_user(&user, UPSTREAM_HOST)?)
            });
            password
        }
        Account::Named { password, .. } => password.clone(),
    };

    progress.step("volume");
    let mut volume = opts.clone();
    volume.size = volume.size.max(space_needed(&facts, Mode::Online) * 2);
    let domain = source::make_volume(ctx, name, &volume, &mut undo)?;
    // The base must not share a server_id with the server, its replicas or its own
    // source: replication skips events that look like its own.
    let mut avoid = vec![facts.server_id];
    avoid.extend(&facts.replica_ids);
    avoid.extend(facts.replicates_from);
    let mut cfg = source::source_config(
        ctx,
        name,
        port,
        &domain,
        opts.buffer_pool,
        &avoid,
        &mut undo,
    )?;
    // A replica of the operator's server: written by replication only, reading table
    // names and GTID order as the server does.
    cfg.read_only = true;
    cfg.extra.extend(facts.inherited_options());

    progress.step("copy");
    progress.copy_started(copy_estimate(&facts));
    let mut stream = server
        .backup_stream(&facts.datadir, &cfg.run_dir.join("backup.log"), lock_wait)
        .map_err(|e| doing("starting mariadb-backup")(e.into()))?;
    let mut received = 0;
    let mut reader = Cancellable {
        inner: &mut stream,
        progress,
    };
    let restored = sub.restore_datadir(&cfg, &mut reader, &mut |n| {
        received = n;
        progress.copied(n)
    });
    let restored = match restored {
        Ok(r) => {
            stream
                .finish()
                .map_err(|e| doing("copying its data")(e.into()))?;
            r
        }
        Err(e) => {
            stream.abort();
            go_on(progress, "copying its data")?;
            return Err(doing("copying its data")(e.into()));
        }
    };
    go_on(progress, "starting the base")?;
    progress.copy_done(received);
    cfg.extra.extend(restored.options.clone());

    progress.step("base start");
    let upstream = Upstream {
        socket: server.socket().to_path_buf(),
        defaults_file: server.login().defaults_file.clone(),
        host: UPSTREAM_HOST.into(),
        port: facts.port,
        server_id: facts.server_id,
        account: format!("'{}'@'{UPSTREAM_HOST}'", account.user()),
        account_made: matches!(account, Account::Made { .. }),
        datadir: facts.datadir.clone(),
        adopted_at: restored.gtid.to_string(),
    };
    let rec = source::start_source(ctx, name, cfg, domain, Some(upstream), &mut undo)?;
    let base = sub.endpoint(&rec.config, &rec.domain)?;
    base.replicate_from(
        &ReplicationSource {
            host: UPSTREAM_HOST.into(),
            port: facts.port,
            user: account.user().into(),
            password,
        },
        &restored.gtid,
    )
    .map_err(|e| doing("replicating from the server")(e.into()))?;

    progress.step("catch-up");
    let target = server.gtid_binlog_pos()?;
    let total = transactions_behind(&target, &restored.gtid);
    let mut io_failing_since: Option<std::time::Instant> = None;
    let mut progress_at = (u64::MAX, std::time::Instant::now());
    loop {
        go_on(progress, "catching up")?;
        let status = base
            .replication_status()?
            .ok_or_else(|| Error::CatchUp(format!("{name} stopped replicating")))?;
        if let Some(why) = status.broken() {
            return Err(Error::CatchUp(format!(
                "{name} cannot replicate from the server: {why}"
            )));
        }
        // A connection that keeps failing is retried by the server for ever; the
        // adoption gives up and says why.
        if status.last_io_errno != 0 && status.io_running != "Yes" {
            let since = *io_failing_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > IO_FAILING_FOR {
                return Err(Error::CatchUp(format!(
                    "{name} has not reached the server for {} s: error {}: {}",
                    IO_FAILING_FOR.as_secs(),
                    status.last_io_errno,
                    status.last_io_error
                )));
            }
        } else {
            io_failing_since = None;
        }
        let behind = transactions_behind(&target, &status.gtid_slave_pos);
        progress.behind(behind, total);
        if behind == 0 {
            break;
        }
        if behind < progress_at.0 {
            progress_at = (behind, std::time::Instant::now());
        } else if progress_at.1.elapsed() > NO_PROGRESS_FOR {
            return Err(Error::CatchUp(format!(
                "{name} applied nothing for {} s, {behind} transactions behind (its SQL \
                 thread may wait on a lock, or skip events as its own: its server_id {} must \
                 be no other server's in your replication)",
                NO_PROGRESS_FOR.as_secs(),
                rec.config.server_id
            )));
        }
        // Polling the base's position: nothing to wait on that says it moved.
        std::thread::sleep(CATCH_UP_POLL);
    }
    ctx.registry().save(&rec)?;
    undo.commit();
    Ok(rec)
}

#[cfg(test)]
/// Debian bookworm's MariaDB as its service runs it, binlog turned on.
pub(crate) fn debian_facts() -> ServerFacts {
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
        skip_networking: false,
        bind_address: "127.0.0.1".into(),
        session_user: "root@localhost".into(),
        page_size: 16384,
        buffer_pool_size: 128 << 20,
        gtid_domain_id: 0,
        pid_file: "/run/mysqld/mysqld.pid".into(),
        socket: "/run/mysqld/mysqld.sock".into(),
        log_bin_basename: Some("/var/log/mysql/mysql-bin".into()),
        innodb_dirs: Vec::new(),
        replicates_from: None,
        replica_ids: Vec::new(),
        root_by_socket: Some(true),
        lower_case_table_names: 0,
        gtid_strict_mode: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian() -> ServerFacts {
        debian_facts()
    }

    fn roomy() -> StoreView {
        StoreView {
            server_ids: vec![("db".into(), 2)],
            upstreams: vec![("other".into(), 7, 3306)],
            free_bytes: 10 << 30,
            account_exists: None,
            needed_bytes: 1 << 30,
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
                Box::new(|_, s| s.upstreams.push(("base".into(), 1, 3306))),
                "adopted already, as base",
            ),
            (
                Box::new(|f, _| f.skip_networking = true),
                "remove skip-networking",
            ),
            (
                Box::new(|f, _| f.bind_address = "10.0.0.5".into()),
                "listens on 10.0.0.5 only",
            ),
            (
                Box::new(|f, _| f.page_size = 8192),
                "innodb_page_size is 8192",
            ),
            (
                Box::new(|f, _| f.root_by_socket = Some(false)),
                "IDENTIFIED VIA unix_socket",
            ),
            (
                Box::new(|_, s| s.account_exists = Some("'dbfork_base'@'127.0.0.1'".into())),
                "--replication-user",
            ),
            (
                Box::new(|f, _| {
                    f.grants = vec!["GRANT RELOAD, PROCESS ON *.* TO `ops`@`localhost`".into()]
                }),
                "lacks LOCK TABLES, BINLOG MONITOR, CREATE USER, REPLICATION SLAVE, GRANT OPTION",
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
    fn what_cannot_be_read_or_listens_everywhere_is_no_refusal() {
        for bind in ["0.0.0.0", "::", "", "10.0.0.5,127.0.0.1"] {
            let mut f = debian();
            f.bind_address = bind.into();
            assert_eq!(refusals(&f, &roomy()), Vec::<String>::new(), "{bind:?}");
        }
        let mut f = debian();
        f.root_by_socket = None;
        assert_eq!(refusals(&f, &roomy()), Vec::<String>::new());
    }

    #[test]
    fn the_copy_is_estimated_from_the_datadir_without_its_logs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("shop")).unwrap();
        std::fs::write(d.join("shop/t.ibd"), vec![0u8; 3000]).unwrap();
        std::fs::write(d.join("ibdata1"), vec![0u8; 1000]).unwrap();
        std::fs::write(d.join("ib_logfile0"), vec![0u8; 50_000]).unwrap();
        std::fs::write(d.join("mysql-bin.000001"), vec![0u8; 70_000]).unwrap();
        let mut f = debian();
        f.datadir = d.to_path_buf();
        f.log_bin_basename = Some(d.join("mysql-bin"));
        f.data_bytes = 10;
        assert_eq!(copy_estimate(&f), 4000);
        f.datadir = d.join("missing");
        assert_eq!(copy_estimate(&f), 10);
    }

    #[test]
    fn the_catch_up_counts_transactions_over_every_domain() {
        let p = |s: &str| s.parse::<GtidPos>().unwrap();
        assert_eq!(transactions_behind(&p("0-1-100,1-5-10"), &p("0-1-90")), 20);
        assert_eq!(transactions_behind(&p("0-1-100"), &p("0-1-100,1-5-3")), 0);
        assert_eq!(transactions_behind(&p("0-1-100"), &p("0-1-120")), 0);
        assert_eq!(transactions_behind(&p(""), &p("")), 0);
    }

    #[test]
    fn the_account_dbfork_makes_fits_mariadbs_user_names() {
        assert_eq!(Account::made_for("base").user(), "dbfork_base");
        assert_eq!(Account::made_for(&"x".repeat(100)).user().len(), 80);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "").unwrap();
        let e = Account::named("repl", &f).unwrap_err().to_string();
        assert!(e.contains("must be the password of repl"), "{e}");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(
            Account::named("repl", &f).unwrap(),
            Account::Named {
                user: "repl".into(),
                password: "s3cret".into()
            }
        );
    }

    #[test]
    fn older_names_and_narrower_grants_count() {
        let mut f = debian();
        f.grants = vec![
            "GRANT RELOAD, PROCESS, LOCK TABLES, REPLICATION CLIENT, CREATE USER, REPLICATION \
             SLAVE ON *.* TO `ops`@`localhost` WITH GRANT OPTION"
                .into(),
            // Grants on one database do not count for the server.
            "GRANT ALL PRIVILEGES ON `app`.* TO `ops`@`localhost`".into(),
        ];
        assert_eq!(refusals(&f, &roomy()), Vec::<String>::new());
        f.grants.remove(0);
        assert_eq!(refusals(&f, &roomy()).len(), 1);
    }
}
