//! `dbfork source adopt --take-over` and `dbfork source release`: the operator's
//! server itself moved onto a dbfork volume and back. The take-over stops the server
//! (as the operator says: a systemd unit or a command), copies its datadir into a new
//! volume (reflinked where the store's file system shares extents), and starts it from
//! there under dbfork with its own options, port and server_id, its socket path linked
//! to the new socket; its original datadir is left as it was until the release. The
//! release stops it, puts the datadir back where it was (owner and mode as they were),
//! starts the server the operator's way again, and only then removes what dbfork held.

use crate::adopt::{self, Account, AdoptProgress};
use crate::clone::Say;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::registry::{InstanceRecord, ServerControl, TakenOver};
use crate::source::{self, SourceOptions};
use crate::undo::Undo;
use dbinstance::external::{ExternalServer, Login, ServerFacts, ServerProcess};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use substrate::Stop;

/// How long the operator's server may take to stop or to answer after a start.
const SERVER_WAIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(100);

/// Options dbfork sets itself for a server it runs (its paths, identity and what the
/// agent needs); every other option of the operator's server is carried over as it is.
const OWNED: [&str; 13] = [
    "datadir",
    "socket",
    "pid_file",
    "log_error",
    "tmpdir",
    "user",
    "port",
    "bind_address",
    "server_id",
    "gtid_domain_id",
    "innodb_buffer_pool_size",
    "innodb_use_native_aio",
    "innodb_flush_log_at_trx_commit",
];

/// The operator's options a server under dbfork keeps: all but [`OWNED`] (and
/// `skip_slave_start`, which dbfork sets and acts on).
pub fn carried_options(options: &[(String, String)]) -> Vec<(String, String)> {
    options
        .iter()
        .filter(|(k, _)| !OWNED.contains(&k.as_str()) && k != "skip_slave_start")
        .cloned()
        .collect()
}

impl ServerControl {
    fn command(&self, start: bool) -> (Command, String) {
        match self {
            ServerControl::Service { unit } => {
                let verb = if start { "start" } else { "stop" };
                let mut c = Command::new("systemctl");
                c.arg(verb).arg(unit);
                (c, format!("systemctl {verb} {unit}"))
            }
            ServerControl::Commands { stop, start: st } => {
                let text = if start { st } else { stop };
                let mut c = Command::new("sh");
                c.arg("-c").arg(text);
                (c, text.clone())
            }
        }
    }

    /// Runs the stop or start; its output goes to `log` (a file, not a pipe: a
    /// command that leaves a daemon behind would hold a pipe open).
    fn run(&self, start: bool, log: &Path) -> Result<()> {
        let (mut cmd, text) = self.command(start);
        let out = std::fs::File::create(log).map_err(Error::io("making", log))?;
        let err = out.try_clone().map_err(Error::io("making", log))?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(Error::io("running the server's control command", log))?;
        if status.success() {
            return Ok(());
        }
        Err(Error::ServerControl {
            command: text,
            status: status.to_string(),
            output: dbinstance::tools::tail_of_file(log, 10),
        })
    }
}

/// What a take-over adds to the preflight's refusals, and what it tells besides.
pub struct TakeOverCheck {
    pub facts: ServerFacts,
    pub refusals: Vec<String>,
    /// What changes for the server without keeping it from being taken over.
    pub notes: Vec<String>,
    pub process: Option<ServerProcess>,
    pub datadir_bytes: u64,
}

/// The take-over's preflight: the adoption's refusals (but the replication account's),
/// and the server's process, datadir and room for it.
pub fn check(ctx: &Ctx, server: &ExternalServer) -> Result<TakeOverCheck> {
    // No account is made on the server while it runs: its replicas' account is made
    // once it runs under dbfork.
    let (facts, mut refusals) = adopt::preflight(
        ctx,
        server,
        &Account::Named {
            user: String::new(),
            password: String::new(),
        },
    )?;
    // The copy is the whole datadir, not the InnoDB data the online copy streams.
    refusals.retain(|r| !r.contains("a copy of the server's data needs"));
    let process = match ServerProcess::from_pid_file(&facts.pid_file) {
        Ok(p) => Some(p),
        Err(e) => {
            refusals.push(format!(
                "its process cannot be found from its pid file {} ({e}): dbfork must read \
                 the options it runs with; run dbfork as root on the server's host",
                facts.pid_file.display()
            ));
            None
        }
    };
    let datadir_bytes = match lazyvol::tree_bytes(&facts.datadir) {
        Ok(n) => n,
        Err(e) => {
            refusals.push(format!(
                "its datadir {} cannot be read ({e}): run dbfork as root",
                facts.datadir.display()
            ));
            0
        }
    };
    let needed = datadir_bytes + datadir_bytes / 10 + (64 << 20);
    let free = ctx.free_bytes()?;
    if free < needed {
        refusals.push(format!(
            "the store has {} free, its datadir needs about {}: free space there or use a \
             store (--store) on a larger file system",
            crate::units::human(free),
            crate::units::human(needed)
        ));
    }
    if facts.datadir.starts_with(&ctx.store_dir) {
        refusals.push(format!(
            "its datadir {} is inside the store: it is a dbfork instance's already",
            facts.datadir.display()
        ));
    }
    let mut notes = Vec::new();
    if facts.innodb_use_native_aio {
        notes.push(
            "it runs with innodb_use_native_aio=ON; under dbfork it runs with it OFF (the \
             page-sharing agent sees the server's reads through the C library). That takes \
             effect with the restart the take-over is; the release gives its own setting \
             back"
                .to_string(),
        );
    }
    Ok(TakeOverCheck {
        facts,
        refusals,
        notes,
        process,
        datadir_bytes,
    })
}

/// Waits until `pid` is gone.
fn wait_gone(pid: u32, what: &str) -> Result<()> {
    let t0 = Instant::now();
    while substrate::process::process_alive(pid) {
        if t0.elapsed() > SERVER_WAIT {
            return Err(Error::ServerWait(format!(
                "the server (pid {pid}) did not stop within {} s after {what}",
                SERVER_WAIT.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Waits until the server at `socket` answers with `login`.
fn wait_answers(socket: &Path, login: &Login, what: &str) -> Result<()> {
    let server = ExternalServer::with_login(socket, login.clone());
    let t0 = Instant::now();
    loop {
        match server.conn() {
            Ok(_) => return Ok(()),
            Err(e) if t0.elapsed() > SERVER_WAIT => {
                return Err(Error::ServerWait(format!(
                    "the server did not answer at {} within {} s after {what}: {e}",
                    socket.display(),
                    SERVER_WAIT.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Takes the operator's server over as source `name`.
pub fn take_over(
    ctx: &Ctx,
    name: &str,
    server: &ExternalServer,
    control: &ServerControl,
    opts: &SourceOptions,
    progress: &dyn AdoptProgress,
) -> Result<(InstanceRecord, Vec<String>)> {
    let sub = ctx.substrate();
    ctx.check_free(name)?;
    sub.preflight()?;
    progress.step("preflight");
    let checked = check(ctx, server)?;
    if !checked.refusals.is_empty() {
        return Err(Error::AdoptRefused {
            name: name.into(),
            socket: server.socket().to_path_buf(),
            refusals: checked.refusals,
        });
    }
    let facts = &checked.facts;
    let process = checked
        .process
        .expect("a preflight without refusals found it");
    let options = process.options()?;
    let meta = std::fs::metadata(&facts.datadir).map_err(Error::io("reading", &facts.datadir))?;
    let log = ctx.registry().run_dir(name).join("server-control.log");
    let doing = |what: &'static str| {
        move |e: Error| Error::Adopt {
            name: name.into(),
            what: what.into(),
            source: Box::new(e),
        }
    };
    let mut undo = Undo::new();

    progress.step("volume");
    let mut volume = opts.clone();
    volume.size = volume.size.max(checked.datadir_bytes * 2 + (256 << 20));
    let domain = source::make_volume(ctx, name, &volume, &mut undo)?;
    let mut cfg = source::source_config(
        ctx,
        name,
        facts.port,
        &domain,
        facts.buffer_pool_size,
        &[],
        &mut undo,
    )?;
    // The server keeps who it is and where it listens.
    cfg.server_id = facts.server_id;
    cfg.gtid_domain_id = facts.gtid_domain_id;
    cfg.bind_address = match facts.bind_address.as_str() {
        "" | "*" => "0.0.0.0".into(),
        b => b.into(),
    };
    cfg.extra.extend(carried_options(&options));

    progress.step("stop");
    {
        // A stop that fails halfway may still have stopped it: whatever does not answer
        // is started again.
        let (socket, login, log) = (facts.socket.clone(), server.login().clone(), log.clone());
        undo.push("the server's own start", move || {
            if ExternalServer::with_login(&socket, login.clone())
                .conn()
                .is_ok()
            {
                return Ok(());
            }
            control.run(true, &log)?;
            wait_answers(&socket, &login, "its start")
        });
    }
    control
        .run(false, &log)
        .map_err(doing("stopping the server"))?;
    wait_gone(process.pid, "the stop").map_err(doing("stopping the server"))?;

    progress.step("copy");
    progress.copy_started(checked.datadir_bytes);
    let copied = sub
        .import_datadir(&cfg, &facts.datadir, &mut |n| progress.copied(n))
        .map_err(|e| doing("copying its datadir")(e.into()))?;
    progress.copy_done(copied);

    progress.step("start under dbfork");
    let mut rec = source::start_source(ctx, name, cfg, domain, None, &mut undo)
        .map_err(doing("starting it from the volume"))?;
    let account = Account::made_for(name).user().to_string();
    sub.endpoint(&rec.config, &rec.domain)?
        .make_replication_account(&account)
        .map_err(|e| doing("making its replicas' account")(e.into()))?;
    // Clients that know the server by its socket path find it there still.
    let socket_linked = !facts.socket.as_os_str().is_empty()
        && facts.socket.symlink_metadata().is_err()
        && std::os::unix::fs::symlink(rec.config.socket_path(), &facts.socket).is_ok();
    if socket_linked {
        let link = facts.socket.clone();
        undo.push("the socket link", move || {
            let _ = std::fs::remove_file(&link);
            Ok(())
        });
    }
    use std::os::unix::fs::MetadataExt;
    rec.taken_over = Some(TakenOver {
        datadir: facts.datadir.clone(),
        owner: (meta.uid(), meta.gid()),
        mode: meta.mode() & 0o7777,
        socket: facts.socket.clone(),
        socket_linked,
        log_bin_basename: facts.log_bin_basename.clone(),
        defaults_file: server.login().defaults_file.clone(),
        control: control.clone(),
        account: format!("'{account}'@'%'"),
    });
    ctx.registry().save(&rec)?;
    undo.commit();
    let mut notes = checked.notes;
    notes.push(match control {
        ServerControl::Service { unit } => format!(
            "it runs under dbfork now, and `dbfork start --all` (dbfork.service) starts it at \
             boot: keep {unit} from starting it too (systemctl disable {unit}) until the release"
        ),
        ServerControl::Commands { .. } => "it runs under dbfork now, and `dbfork start --all` \
             (dbfork.service) starts it at boot: keep whatever started it at boot from \
             starting it too until the release"
            .into(),
    });
    Ok((rec, notes))
}

/// The binary log files beside `basename` (its numbered files and its index).
fn binlog_files(basename: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(stem)) = (basename.parent(), basename.file_name()) else {
        return Vec::new();
    };
    let stem = stem.to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}.")))
        })
        .collect()
}

/// Gives the taken-over server `name` back: its datadir where it was, started the
/// operator's way. Returns the datadir.
pub fn release(ctx: &Ctx, name: &str, progress: &dyn AdoptProgress, say: Say) -> Result<PathBuf> {
    let reg = ctx.registry();
    let rec = reg.load(name)?;
    let Some(t) = rec.taken_over.clone() else {
        return Err(Error::NotTakenOver(name.into()));
    };
    let children = reg.children(name)?;
    if !children.is_empty() {
        let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
        return Err(Error::HasReplicas {
            name: name.to_string(),
            replicas: names.join(", "),
        });
    }
    let sub = ctx.substrate_for(&rec.domain)?;
    let mut undo = Undo::new();
    progress.step("stop under dbfork");
    sub.stop(
        &rec.config,
        &rec.domain,
        Stop::Clean(dbinstance::instance::DEFAULT_STOP_TIMEOUT),
    )?;
    undo.push(format!("{name} started under dbfork again"), move || {
        crate::lifecycle::start(ctx, name, &|_| {}).map(|_| ())
    });

    progress.step("copy back");
    let file = t.datadir.file_name().unwrap_or_default().to_string_lossy();
    let staged = t.datadir.with_file_name(format!("{file}.dbfork-release"));
    let old = t.datadir.with_file_name(format!("{file}.dbfork-old"));
    // What a release that failed before left.
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir(&staged).map_err(Error::io("making", &staged))?;
    {
        let staged = staged.clone();
        undo.push("the staged datadir", move || {
            let _ = std::fs::remove_dir_all(&staged);
            Ok(())
        });
    }
    let total = lazyvol::tree_bytes(&rec.config.datadir).unwrap_or(0);
    progress.copy_started(total);
    let copied = sub.export_datadir(&rec.config, &staged, &mut |n| progress.copied(n))?;
    progress.copy_done(copied);
    // What the server wrote under dbfork is root's; the operator's server runs as the
    // datadir's owner.
    let (uid, gid) = t.owner;
    lazyvol::chown_tree(&staged, uid, gid).map_err(Error::io("giving back", &staged))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(t.mode))
        .map_err(Error::io("giving back", &staged))?;
    if let Some(base) = t
        .log_bin_basename
        .as_ref()
        .filter(|b| !b.starts_with(&t.datadir))
    {
        for f in binlog_files(base) {
            std::os::unix::fs::lchown(&f, Some(uid), Some(gid))
                .map_err(Error::io("giving back", &f))?;
        }
    }
    // The datadir as it was before the take-over goes only once the new one is whole.
    std::fs::rename(&t.datadir, &old).map_err(Error::io("moving aside", &t.datadir))?;
    if let Err(e) = std::fs::rename(&staged, &t.datadir) {
        let _ = std::fs::rename(&old, &t.datadir);
        return Err(Error::io("putting back", &t.datadir)(e));
    }
    std::fs::remove_dir_all(&old).map_err(Error::io("removing", &old))?;
    if t.socket_linked && t.socket.read_link().ok() == Some(rec.config.socket_path()) {
        let _ = std::fs::remove_file(&t.socket);
    }

    progress.step("start");
    let log = reg.run_dir(name).join("server-control.log");
    let login = Login {
        defaults_file: t.defaults_file.clone(),
        ..match &t.defaults_file {
            Some(f) => Login::from_defaults_file(f)?.0,
            None => Login::default(),
        }
    };
    t.control
        .run(true, &log)
        .and_then(|()| wait_answers(&t.socket, &login, "its start"))
        .map_err(|e| Error::Released {
            datadir: t.datadir.clone(),
            name: name.into(),
            source: Box::new(e),
        })?;
    undo.commit();
    // The server runs its own way again: what dbfork held goes.
    crate::destroy::forget_released(ctx, name)?;
    say(&format!(
        "released {name}: the server runs from {} again (socket {}); the account {} \
         dbfork made for its replicas stays: remove it with DROP USER {}{}",
        t.datadir.display(),
        t.socket.display(),
        t.account,
        t.account,
        match &t.control {
            ServerControl::Service { unit } => {
                format!("; let {unit} start it at boot again (systemctl enable {unit})")
            }
            ServerControl::Commands { .. } => String::new(),
        }
    ));
    Ok(t.datadir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_options_are_carried_but_what_dbfork_runs() {
        let o = |k: &str, v: &str| (k.to_string(), v.to_string());
        let printed = vec![
            o("user", "mysql"),
            o("pid_file", "/run/mysqld/mysqld.pid"),
            o("socket", "/run/mysqld/mysqld.sock"),
            o("basedir", "/usr"),
            o("datadir", "/var/lib/mysql"),
            o("bind_address", "127.0.0.1"),
            o("log_bin", "/var/log/mysql/mysql-bin.log"),
            o("expire_logs_days", "10"),
            o("character_set_server", "utf8mb4"),
            o("innodb_buffer_pool_size", "1G"),
            o("innodb_use_native_aio", "1"),
            o("skip_slave_start", ""),
            o("server_id", "1"),
        ];
        assert_eq!(
            carried_options(&printed),
            vec![
                o("basedir", "/usr"),
                o("log_bin", "/var/log/mysql/mysql-bin.log"),
                o("expire_logs_days", "10"),
                o("character_set_server", "utf8mb4"),
            ]
        );
    }

    #[test]
    fn the_binlog_files_are_the_basenames_own() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "mysql-bin.000001",
            "mysql-bin.index",
            "mysql-bin-other",
            "error.log",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let mut got: Vec<String> = binlog_files(&dir.path().join("mysql-bin"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(got, ["mysql-bin.000001", "mysql-bin.index"]);
    }
}
