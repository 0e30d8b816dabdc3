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

/// The operator's options a server under dbfork keeps: all but [`OWNED`],
/// `skip_slave_start` (which dbfork sets and acts on) and short options (a letter
/// stands for different options in different versions).
pub fn carried_options(options: &[(String, String)]) -> Vec<(String, String)> {
    options
        .iter()
        .filter(|(k, _)| {
            !OWNED.contains(&k.as_str()) && k != "skip_slave_start" && !k.starts_with('-')
        })
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
/// and what the take-over needs besides: the server's process (for its options), a
/// datadir that holds all of its data (the copy is of the datadir alone), one dbfork
/// can put back by rename, room for it in the store, and a server that is no replica
/// itself.
pub fn check(ctx: &Ctx, server: &ExternalServer) -> Result<TakeOverCheck> {
    let facts = server.facts()?;
    let datadir = facts.datadir.clone();
    let (datadir_bytes, unreadable) = match lazyvol::tree_bytes(&datadir) {
        Ok(n) => (n, None),
        Err(e) => (0, Some(e)),
    };
    // No account is made on the server while it runs: its replicas' account is made
    // once it runs under dbfork.
    let no_account = Account::Named {
        user: String::new(),
        password: String::new(),
    };
    let (facts, mut refusals) = adopt::judge(
        ctx,
        server,
        facts,
        &no_account,
        adopt::Mode::TakeOver {
            bytes: datadir_bytes,
        },
    )?;
    if let Some(e) = unreadable {
        refusals.push(format!(
            "its datadir {} cannot be read ({e}): run dbfork as root",
            datadir.display()
        ));
    }
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
    if facts.datadir.starts_with(&ctx.store_dir) {
        refusals.push(format!(
            "its datadir {} is inside the store: it is a dbfork instance's already",
            facts.datadir.display()
        ));
    }
    refusals.extend(datadir_refusals(&facts));
    if let Some(master) = facts.replicates_from {
        refusals.push(format!(
            "it replicates from server {master} itself, and dbfork does not resume a \
             taken-over server's own replication yet: adopt it online (without --take-over)"
        ));
    }
    if facts.bind_address.contains(',') {
        refusals.push(format!(
            "it listens on several addresses ({}), and its replicas under dbfork reach it at \
             one: set bind_address to one address (or 0.0.0.0) and restart it",
            facts.bind_address
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

/// `path` (relative ones are the datadir's) with what exists of it resolved.
fn resolved(datadir: &Path, path: &Path) -> PathBuf {
    let full = datadir.join(path);
    // The longest existing ancestor resolved, the rest as written.
    for anc in full.ancestors() {
        if let Ok(real) = anc.canonicalize() {
            return real.join(full.strip_prefix(anc).unwrap_or(Path::new("")));
        }
    }
    full
}

/// What keeps the datadir from being the whole of the server's data, or from being put
/// back by rename: data kept elsewhere (a binary log, InnoDB directories, symlinked
/// databases, tables with DATA DIRECTORY), a datadir that is a symlink or a mount point.
fn datadir_refusals(facts: &ServerFacts) -> Vec<String> {
    let mut out = Vec::new();
    let dir = facts
        .datadir
        .to_string_lossy()
        .trim_end_matches('/')
        .to_string();
    let dir = Path::new(&dir);
    let Ok(real) = dir.canonicalize() else {
        return out;
    };
    let move_it = "move it into the datadir, or adopt the server online (without \
                   --take-over), which copies what it needs wherever it is";
    let mut elsewhere: Vec<(String, PathBuf)> = facts
        .innodb_dirs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), resolved(&real, Path::new(v))))
        .collect();
    if let Some(b) = &facts.log_bin_basename {
        elsewhere.push(("its binary log".into(), resolved(&real, b)));
    }
    for (what, path) in elsewhere {
        if !path.starts_with(&real) {
            out.push(format!(
                "{what} is outside its datadir ({}), and a take-over copies the datadir \
                 only: {move_it}",
                path.display()
            ));
        }
    }
    let linked: Vec<String> = std::fs::read_dir(&real)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            let inner: Vec<PathBuf> = if p.is_dir() && !p.is_symlink() {
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .collect()
            } else {
                Vec::new()
            };
            std::iter::once(p).chain(inner)
        })
        .filter(|p| p.is_symlink() || p.extension().is_some_and(|x| x == "isl"))
        .map(|p| p.display().to_string())
        .take(3)
        .collect();
    if !linked.is_empty() {
        out.push(format!(
            "its datadir links to data elsewhere ({}: a symlink or a table with DATA \
             DIRECTORY), which a take-over would share rather than copy: {move_it}",
            linked.join(", ")
        ));
    }
    if dir.is_symlink() {
        out.push(format!(
            "its datadir {} is a symlink (to {}), which the release could not put back: \
             point datadir at {} and restart it, or adopt it online",
            dir.display(),
            real.display(),
            real.display()
        ));
    }
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if let (Some(d), Some(parent)) = (dev(&real), real.parent().and_then(dev)) {
        if d != parent {
            out.push(format!(
                "its datadir {} is a mount point, which the release could not put back by \
                 rename: make it a directory on that file system (e.g. {}/mysql) and restart \
                 it, or adopt it online",
                real.display(),
                real.display()
            ));
        }
    }
    out
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
                return Err(Error::ServerSilent {
                    socket: socket.to_path_buf(),
                    secs: SERVER_WAIT.as_secs(),
                    after: what.into(),
                    source: Box::new(e),
                })
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
    let short: Vec<&str> = options
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with('-'))
        .collect();
    let mut short_note = None;
    if !short.is_empty() {
        short_note = Some(format!(
            "the short options on its command line ({}) are not carried over: give them as \
             long options in its option file if it needs them under dbfork",
            short.join(" ")
        ));
    }

    adopt::go_on(progress, "stopping the server")?;
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
    // A signal during the copy stops the take-over here: the server starts again from
    // its own datadir.
    adopt::go_on(progress, "copying its datadir")?;

    progress.step("start under dbfork");
    let mut rec = source::start_source(ctx, name, cfg, domain, None, &mut undo)
        .map_err(doing("starting it from the volume"))?;
    // From its first write under dbfork, the volume holds its newest data: no way back
    // to the original datadir but the release. The record says so at once.
    use std::os::unix::fs::MetadataExt;
    let account = Account::made_for(name).user().to_string();
    // Clients that know the server by its socket path find it there still.
    let socket_linked = !facts.socket.as_os_str().is_empty()
        && facts.socket.symlink_metadata().is_err()
        && std::os::unix::fs::symlink(rec.config.socket_path(), &facts.socket).is_ok();
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
        released: false,
    });
    ctx.registry().save(&rec)?;
    undo.commit();
    sub.endpoint(&rec.config, &rec.domain)?
        .make_replication_account(&account)
        .map_err(|e| Error::Adopt {
            name: name.into(),
            what: format!(
                "making its replicas' account (it runs under dbfork now: `dbfork source \
                 release {name}` gives it back; clones of it fail until an account is made)"
            ),
            source: Box::new(e.into()),
        })?;
    let mut notes = checked.notes;
    notes.extend(short_note);
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

/// Gives the taken-over server `name` back: its datadir where it was, started the
/// operator's way. Returns the datadir. Run again after a failure, it goes on from
/// where that one stopped.
pub fn release(ctx: &Ctx, name: &str, progress: &dyn AdoptProgress, say: Say) -> Result<PathBuf> {
    let reg = ctx.registry();
    let mut rec = reg.load(name)?;
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
    // Read before anything changes: a login that cannot be read fails here, not after
    // the datadir went back.
    let login = match &t.defaults_file {
        Some(f) => Login::from_defaults_file(f)?.0,
        None => Login::default(),
    };
    if !t.released {
        put_back(ctx, &rec, &t, progress)?;
        if let Some(t) = rec.taken_over.as_mut() {
            t.released = true;
        }
        reg.save(&rec)?;
    }
    let (_, old) = release_paths(&t);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(Error::io("removing", &old))?;
    }
    if t.socket_linked && t.socket.read_link().ok() == Some(rec.config.socket_path()) {
        let _ = std::fs::remove_file(&t.socket);
    }

    progress.step("start");
    let log = reg.run_dir(name).join("server-control.log");
    t.control
        .run(true, &log)
        .and_then(|()| wait_answers(&t.socket, &login, "its start"))
        .map_err(|e| Error::Released {
            datadir: t.datadir.clone(),
            name: name.into(),
            source: Box::new(e),
        })?;
    // The server runs its own way again: what dbfork held goes.
    crate::destroy::forget_released(ctx, name)?;
    say(&format!(
        "released {name}: the server runs from {} again (socket {}); the account dbfork \
         made for its replicas stays (never in its binary log): remove it with SET SESSION \
         sql_log_bin = 0; DROP USER IF EXISTS {}{}",
        t.datadir.display(),
        t.socket.display(),
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

/// Stops the server under dbfork and puts its datadir back where it was (owner and
/// mode as they were); a failure before the swap starts it under dbfork again.
fn put_back(
    ctx: &Ctx,
    rec: &InstanceRecord,
    t: &TakenOver,
    progress: &dyn AdoptProgress,
) -> Result<()> {
    let name = rec.name.as_str();
    let sub = ctx.substrate_for(&rec.domain)?;
    let (staged, old) = release_paths(t);
    match (t.datadir.exists(), old.exists()) {
        // A release that failed after the swap, before removing the old copy.
        (true, true) => std::fs::remove_dir_all(&old).map_err(Error::io("removing", &old))?,
        (false, true) => {
            return Err(Error::ServerWait(format!(
                "{} is missing and {} holds the datadir from before the take-over (a release \
                 stopped between its renames); the current data is on dbfork's volume {name}: \
                 move {} away and release again",
                t.datadir.display(),
                old.display(),
                old.display()
            )))
        }
        _ => {}
    }
    // The original datadir is stale; a server on it (the operator's own service,
    // started since) would be writing data the release is about to replace.
    if let Some(pid) = dbinstance::preflight::datadir_lock_holder(&t.datadir)? {
        return Err(Error::ServerWait(format!(
            "a server (pid {pid}) runs on {}, the datadir as it was before the take-over, \
             while the current data is on dbfork's volume {name}: stop that server (and keep \
             it from starting: its data is out of date), then release again",
            t.datadir.display()
        )));
    }
    let parent = t.datadir.parent().unwrap_or(Path::new("/"));
    let needed = lazyvol::tree_bytes(&rec.config.datadir).unwrap_or(0);
    let free = crate::ctx::free_bytes(parent)?;
    if free < needed + (64 << 20) {
        return Err(Error::NoSpace {
            dir: parent.to_path_buf(),
            needed: crate::units::human(needed + (64 << 20)),
            free: crate::units::human(free),
        });
    }

    let mut undo = Undo::new();
    adopt::go_on(progress, "stopping it under dbfork")?;
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
    progress.copy_started(needed);
    let copied = sub.export_datadir(&rec.config, &staged, &mut |n| progress.copied(n))?;
    progress.copy_done(copied);
    adopt::go_on(progress, "copying its datadir back")?;
    // What the server wrote under dbfork is root's; the operator's server runs as the
    // datadir's owner.
    let (uid, gid) = t.owner;
    lazyvol::chown_tree(&staged, uid, gid).map_err(Error::io("giving back", &staged))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(t.mode))
        .map_err(Error::io("giving back", &staged))?;
    // The datadir as it was before the take-over goes only once the new one is whole.
    std::fs::rename(&t.datadir, &old).map_err(Error::io("moving aside", &t.datadir))?;
    if let Err(e) = std::fs::rename(&staged, &t.datadir) {
        let _ = std::fs::rename(&old, &t.datadir);
        return Err(Error::io("putting back", &t.datadir)(e));
    }
    // Swapped: the current data is back; dbfork's server must not start on it again.
    undo.commit();
    Ok(())
}

/// Where the release stages the datadir, and where it moves the old one aside.
fn release_paths(t: &TakenOver) -> (PathBuf, PathBuf) {
    let file = t.datadir.file_name().unwrap_or_default().to_string_lossy();
    (
        t.datadir.with_file_name(format!("{file}.dbfork-release")),
        t.datadir.with_file_name(format!("{file}.dbfork-old")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's server with its datadir at `dir` and its binary log at `log_bin`.
    fn at(dir: &Path, log_bin: &str) -> ServerFacts {
        let mut f = crate::adopt::debian_facts();
        f.datadir = format!("{}/", dir.display()).into();
        f.log_bin_basename = Some(log_bin.into());
        f
    }

    #[test]
    fn data_kept_outside_the_datadir_or_a_datadir_not_put_back_by_rename_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("mysql");
        std::fs::create_dir_all(dir.join("shop")).unwrap();
        let inside = dir.join("mysql-bin").display().to_string();
        assert_eq!(datadir_refusals(&at(&dir, &inside)), Vec::<String>::new());
        // A relative binary log is the datadir's, unless it climbs out of it.
        assert!(datadir_refusals(&at(&dir, "mysql-bin")).is_empty());
        let r = datadir_refusals(&at(&dir, "../log/mysql-bin"));
        assert!(
            r[0].contains("its binary log is outside its datadir"),
            "{r:?}"
        );
        let r = datadir_refusals(&at(&dir, "/var/log/mysql/mysql-bin"));
        assert!(r[0].contains("adopt the server online"), "{r:?}");

        let mut f = at(&dir, &inside);
        f.innodb_dirs = vec![
            ("innodb_data_home_dir".into(), "".into()),
            ("innodb_undo_directory".into(), "./".into()),
            ("innodb_log_group_home_dir".into(), "/srv/redo".into()),
        ];
        let r = datadir_refusals(&f);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with("innodb_log_group_home_dir is outside"),
            "{r:?}"
        );

        std::fs::write(dir.join("shop/t.isl"), "/srv/t.ibd").unwrap();
        std::os::unix::fs::symlink("/srv/db2", dir.join("db2")).unwrap();
        let r = datadir_refusals(&at(&dir, &inside));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("DATA DIRECTORY") && r[0].contains("t.isl"),
            "{r:?}"
        );
        assert!(r[0].contains("db2"), "{r:?}");

        let t2 = tempfile::tempdir().unwrap();
        let real = t2.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = t2.path().join("mysql");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let r = datadir_refusals(&at(&link, &real.join("mysql-bin").display().to_string()));
        assert!(r.iter().any(|r| r.contains("is a symlink")), "{r:?}");
    }

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
            o("-u", " mysql"),
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
}
