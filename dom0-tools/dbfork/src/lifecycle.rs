//! Sources and replicas on the local substrate: `dbfork source create`, `clone`,
//! `destroy`. A database server process is the "domain"; its datadir lives on a
//! managed volume attached through the local attach path.

use crate::attach::{self, AttachRequest, FsType};
use crate::control::{self, Request};
use crate::io_limit::IoLimitRecord;
use crate::paths::RunDir;
use crate::registry::{CloneReport, InstanceRecord, PhaseTimes, Registry, Role};
use crate::sharing::{self, Sharing, SharingRecord};
use crate::undo::Undo;
use crate::volume_cmd::snapshot_volume;
use anyhow::{bail, Context, Result};
use dbinstance::{ConsistentPoint, Instance, InstanceConfig, StartOptions};
use lazyvol::{CloneOptions, Store};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything a lifecycle verb needs to know about where things live.
pub struct Ctx {
    pub store_dir: PathBuf,
    pub dbfork_exe: PathBuf,
}

impl Ctx {
    pub fn new(store_dir: &Path) -> Result<Self> {
        Ok(Ctx {
            store_dir: store_dir.to_path_buf(),
            dbfork_exe: std::env::current_exe().context("locating the dbfork binary")?,
        })
    }
    pub fn store(&self) -> Result<Store> {
        Store::open(&self.store_dir)
            .with_context(|| format!("opening the volume store {}", self.store_dir.display()))
    }
    pub fn registry(&self) -> Registry {
        Registry::new(&self.store_dir)
    }
    pub fn run_dir(&self) -> RunDir {
        RunDir::new(&self.store_dir)
    }
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.store_dir.join("mnt").join(name)
    }
}

/// Instance and volume names share one namespace and must be safe in paths and SQL
/// identifiers of replication users.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if !ok {
        bail!("invalid name {name:?}: use 1-48 of A-Z a-z 0-9 - _, not starting with '-'");
    }
    Ok(())
}

fn check_free(ctx: &Ctx, name: &str) -> Result<()> {
    check_name(name)?;
    if ctx.registry().exists(name) {
        bail!("an instance named {name} already exists (see `dbfork list`)");
    }
    if ctx.store()?.status(name).is_ok() {
        bail!("a volume named {name} already exists in the store (dbfork volume list)");
    }
    Ok(())
}

fn check_port(port: u16) -> Result<()> {
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        bail!("port {port} is in use on 127.0.0.1; pick another with --port or leave it out");
    }
    Ok(())
}

fn pick_port(requested: Option<u16>) -> Result<u16> {
    match requested {
        Some(p) => check_port(p).map(|()| p),
        None => Ok(dbinstance::free_port()?),
    }
}

/// Free bytes on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("statvfs {}", path.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// A lazy clone grows to its full size as it hydrates; refuse up front when the
/// store's filesystem cannot hold that, instead of failing halfway with ENOSPC.
fn check_space(ctx: &Ctx, needed: u64) -> Result<()> {
    std::fs::create_dir_all(&ctx.store_dir)?;
    let free = free_bytes(&ctx.store_dir)?;
    if free < needed {
        bail!(
            "not enough disk in {}: needs up to {}, {} free",
            ctx.store_dir.display(),
            crate::units::human(needed),
            crate::units::human(free)
        );
    }
    Ok(())
}

pub struct SourceOptions {
    pub size: u64,
    pub buffer_pool: u64,
    pub fs: FsType,
    pub port: Option<u16>,
    pub region_size: u64,
}

/// Kills a server and waits until its process is gone (it holds the mount until then).
fn kill_and_wait(cfg: InstanceConfig) -> Result<()> {
    let mut i = Instance::open(cfg)?;
    let pid = i.pid();
    i.kill()?;
    if let Some(pid) = pid {
        crate::tools::wait_until(STOP_TIMEOUT, || !crate::tools::process_alive(pid as u32));
    }
    Ok(())
}

/// Start options that join the page table family before the server runs, so its agent
/// is bound from its first read (the warm-up reads at startup are the valuable ones).
fn start_options(
    ctx: &Ctx,
    sharing: Option<&SharingRecord>,
    io_limit: Option<&IoLimitRecord>,
) -> StartOptions {
    let mut opts = StartOptions::default();
    if sharing.is_none() && io_limit.is_none() {
        return opts;
    }
    let sharing = sharing.map(|sh| (ctx.store_dir.clone(), sh.family_id, sh.domain_id));
    let io_limit = io_limit.cloned();
    opts.before_run = Some(dbinstance::PidHook(std::sync::Arc::new(move |pid| {
        // In the IO group before its first read, like in the page-table domain.
        if let Some(l) = &io_limit {
            crate::io_limit::add_process(l, pid).map_err(|e| e.to_string())?;
        }
        if let Some((dir, family, domain)) = &sharing {
            let (family, domain) = (*family, *domain);
            let ctx = Ctx::new(dir).map_err(|e| format!("{e:#}"))?;
            // A daemon that died since is started again; its state file brings back
            // the families, so joining works as before.
            Sharing::detect(&ctx)?
                .ensure_daemon(&ctx)
                .map_err(|e| format!("{e:#}"))?;
            sharing::join(&ctx, family, domain, pid).map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    })));
    opts
}

/// Limits reads on the block device `volume` is attached through; registers the
/// group's removal (which runs after the server's, undo being last-in first-out).
fn limit_reads(ctx: &Ctx, undo: &mut Undo, volume: &str, iops: u32) -> Result<IoLimitRecord> {
    let rec = attach::load_record(&ctx.run_dir(), volume)?
        .with_context(|| format!("{volume} has no attach record"))?;
    let node = rec
        .loop_device
        .with_context(|| format!("{volume} is attached without a block device"))?;
    let dev = crate::io_limit::device_number(Path::new(&node))?;
    if let Err(e) = crate::orphans::claim(Path::new(crate::orphans::SHM), &ctx.store_dir) {
        tracing::warn!("recording the store as owner of its IO groups: {e}");
    }
    let l = crate::io_limit::create(
        Path::new(crate::io_limit::CGROUP_ROOT),
        &crate::io_limit::group_name(&ctx.store_dir, volume),
        &dev,
        iops,
    )
    .with_context(|| format!("limiting reads of {volume} to {iops}/s"))?;
    let l2 = l.clone();
    undo.push(format!("read limit of {volume}"), move || {
        Ok(crate::io_limit::remove(&l2)?)
    });
    Ok(l)
}

/// Attaches a volume just made and mounts it at its place in the store; registers the
/// undo of both (delete the volume, detach it).
fn mount_new_volume(
    ctx: &Ctx,
    undo: &mut Undo,
    name: &str,
    mkfs: Option<FsType>,
) -> Result<PathBuf> {
    {
        let (dir, n) = (ctx.store_dir.clone(), name.to_string());
        undo.push(format!("volume {name}"), move || {
            Ok(Store::open(&dir)?.delete(&n)?)
        });
    }
    let mp = ctx.mountpoint(name);
    std::fs::create_dir_all(&mp)?;
    attach::attach(&AttachRequest {
        store: &ctx.store_dir,
        volume: name,
        mountpoint: &mp,
        mkfs,
        read_only: false,
        dbfork_exe: &ctx.dbfork_exe,
    })?;
    let (dir, n) = (ctx.store_dir.clone(), name.to_string());
    undo.push(format!("attach of {name}"), move || {
        Ok(attach::detach(&dir, &n)?)
    });
    Ok(mp)
}

/// `dbfork source create`: volume + filesystem + fresh MariaDB datadir with binlog and
/// GTID, server started, recorded as the root of a new family.
pub fn create_source(ctx: &Ctx, name: &str, opts: &SourceOptions) -> Result<InstanceRecord> {
    check_free(ctx, name)?;
    let port = pick_port(opts.port)?;
    check_space(ctx, opts.size)?;
    let store = ctx.store()?;
    let mut undo = Undo::new();
    // Pools (RAM) and IO groups of stores deleted by hand go before this one adds its own.
    let swept = crate::orphans::sweep(
        Path::new(crate::orphans::SHM),
        &crate::orphans::group_roots(),
    );
    if !swept.pools.is_empty() || !swept.groups.is_empty() {
        tracing::info!(?swept, "removed what deleted stores left on this host");
    }

    store.create_with_region_size(name, opts.size, opts.region_size)?;
    let mp = mount_new_volume(ctx, &mut undo, name, Some(opts.fs))?;

    let used: Vec<u32> = ctx
        .registry()
        .list()?
        .iter()
        .map(|r| r.config.server_id)
        .collect();
    let mut cfg = InstanceConfig::in_dir(
        name,
        &ctx.registry().run_dir(name),
        port,
        dbinstance::next_server_id(used),
    );
    cfg.datadir = mp.join("data");
    cfg.buffer_pool_size = opts.buffer_pool;
    std::fs::create_dir_all(&cfg.run_dir)?;
    {
        let (reg_dir, n) = (ctx.store_dir.clone(), name.to_string());
        undo.push(format!("run dir of {name}"), move || {
            Registry::new(&reg_dir).purge(&n);
            Ok(())
        });
    }
    // Family id = the source's server_id (unique in the store); it is also its domain.
    let family = cfg.server_id;
    let (mut sharing, mut sharing_off) = (None, None);
    match Sharing::detect(ctx).and_then(|s| {
        s.ensure_daemon(ctx).map_err(|e| format!("{e:#}"))?;
        s.source_env(ctx, family, &cfg.run_dir, cfg.buffer_pool_size)
            .map_err(|e| format!("{e:#}"))
    }) {
        Ok((preload, env, rec)) => {
            cfg.preload = preload;
            cfg.env = env;
            sharing = Some(SharingRecord {
                domain_id: cfg.server_id,
                ..rec
            });
        }
        Err(why) => sharing_off = Some(why),
    }
    let mut inst = Instance::init(cfg.clone()).context("initialising the datadir")?;
    inst.start_with(&start_options(ctx, sharing.as_ref(), None))
        .context("starting the source server")?;
    {
        let cfg = cfg.clone();
        undo.push(format!("server {name}"), move || kill_and_wait(cfg));
    }
    let rec = InstanceRecord {
        name: name.to_string(),
        role: Role::Source,
        family: name.to_string(),
        volume: name.to_string(),
        mountpoint: mp,
        config: cfg,
        clone: None,
        sharing,
        sharing_off,
        io_limit: None,
    };
    ctx.registry().save(&rec)?;
    undo.commit();
    Ok(rec)
}

pub struct CloneOpts {
    pub rate: Option<u64>,
    pub port: Option<u16>,
    pub buffer_pool: Option<u64>,
    pub prefetch: bool,
    /// Hydrate the whole volume before the server starts.
    pub hydrate_first: bool,
    /// Page sharing with the family (when the parent offers it).
    pub sharing: bool,
    /// Start with an empty buffer pool instead of loading the source's dump.
    pub cold_buffer_pool: bool,
    /// Limit the server's reads on its volume to this many per second.
    pub read_iops: Option<u32>,
}

impl Default for CloneOpts {
    fn default() -> Self {
        CloneOpts {
            rate: None,
            port: None,
            buffer_pool: None,
            prefetch: true,
            hydrate_first: false,
            sharing: true,
            cold_buffer_pool: false,
            read_iops: None,
        }
    }
}

/// Test hook: `DBFORK_FAILPOINT=NAME` makes the operation fail at that point, and
/// `DBFORK_FAILPOINT=kill-export:NAME` kills the named volume's export process there
/// (an engine crash mid-clone). Tests use it to prove that every failure unwinds.
fn failpoint(ctx: &Ctx, point: &str, volume: &str) -> Result<()> {
    let Ok(fp) = std::env::var("DBFORK_FAILPOINT") else {
        return Ok(());
    };
    if fp == point {
        bail!("failpoint {point} hit (DBFORK_FAILPOINT is set)");
    }
    if fp == format!("kill-pagetabled:{point}") {
        let pidfile = ctx.run_dir().path().join("pagetabled.pid");
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            crate::tools::signal(pid, libc::SIGKILL);
            crate::tools::wait_until(std::time::Duration::from_secs(10), || {
                !crate::tools::process_alive(pid)
            });
        }
    }
    if fp == format!("kill-export:{point}") {
        if let Some(rec) = attach::load_record(&ctx.run_dir(), volume)? {
            crate::tools::signal(rec.export_pid, libc::SIGKILL);
            crate::tools::wait_until(std::time::Duration::from_secs(10), || {
                !crate::tools::process_alive(rec.export_pid)
            });
        }
    }
    Ok(())
}

/// How long destroy waits for a server to exit and its mount to be free.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a clone lets the parent flush dirty pages before going ahead.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Progress lines while a clone runs (the CLI prints them; --json stays quiet).
pub type Say<'a> = &'a dyn Fn(&str);

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// `dbfork clone SRC NEW`. See the phase comments; `undo` unwinds any failure.
pub fn clone(
    ctx: &Ctx,
    src: &str,
    new: &str,
    opts: &CloneOpts,
    say: Say,
) -> Result<InstanceRecord> {
    let t_start = Instant::now();
    let reg = ctx.registry();
    let parent = reg.load(src)?;
    check_free(ctx, new)?;
    let port = pick_port(opts.port)?;
    let src_inst = Instance::open(parent.config.clone())?;
    if !src_inst.is_running() {
        bail!("{src} is not running; start it first (its datadir must be live to clone)");
    }
    src_inst
        .require_binlog()
        .with_context(|| format!("{src} cannot be a replication source"))?;
    let store = ctx.store()?;
    let src_size = store.status(&parent.volume)?.size;
    check_space(ctx, src_size)?;
    let run = ctx.run_dir();
    let mut undo = Undo::new();
    let mut phases = PhaseTimes::default();
    let mut warm_set_frames = None;

    // Dirty pages flushed first: the replica's crash recovery has less to redo, and
    // clean frames are the ones it can share. Bounded; a busy source is cloned anyway.
    let t = Instant::now();
    match dbinstance::flush_dirty_pages(&src_inst, 64, FLUSH_TIMEOUT) {
        Ok(f) if f.dirty_before > 64 => say(&format!(
            "flushed {src}'s dirty pages: {} -> {} in {} ms",
            f.dirty_before, f.dirty_after, f.ms
        )),
        Ok(_) => {}
        Err(e) => tracing::warn!("flushing {src} before the clone: {e}"),
    }
    phases.flush = ms(t);

    // Hot set first, outside the hold: it also refreshes ib_buffer_pool in the
    // datadir, which the replica loads at startup from its snapshot.
    let hot = dbinstance::dump_buffer_pool(&src_inst)
        .map_err(|e| tracing::warn!("no hot-page list from {src}: {e}"))
        .unwrap_or_default();
    let spaces = dbinstance::tablespace_files(&src_inst)
        .map_err(|e| tracing::warn!("no tablespace list from {src}: {e}"))
        .unwrap_or_default();

    // 1. Consistent point: commits held, GTID and durable LSN read, volume snapshot
    //    (filesystem frozen around it), commits released.
    let t = Instant::now();
    let snapshot = format!("{src}.at.{new}");
    // A fresh binary log first: the replica's crash recovery scans the last binlog
    // file of its snapshot, which under a write load grows to max_binlog_size (1 GiB),
    // minutes of reading on slow storage; rotated here, it holds only what commits in
    // the moment before the hold.
    if let Err(e) = src_inst.exec("FLUSH BINARY LOGS") {
        tracing::warn!("rotating {src}'s binary log before the clone: {e}");
    }
    let cp = ConsistentPoint::begin(&src_inst)?;
    let gtid = cp.gtid().clone();
    let snapshot_lsn = cp.lsn();
    let snap_res = snapshot_volume(&store, &run, &parent.volume, &snapshot);
    let hold_ms = cp.finish()?;
    snap_res?;
    {
        let (dir, s) = (ctx.store_dir.clone(), snapshot.clone());
        undo.push(format!("snapshot {snapshot}"), move || {
            Ok(Store::open(&dir)?.delete(&s)?)
        });
    }
    // The source agent pools what it reads from now on (and its warm set, by a scan)
    // as valid for this snapshot: only after the snapshot is complete.
    phases.consistent_point = ms(t);
    say(&format!(
        "consistent point: gtid {gtid}, lsn {snapshot_lsn}, commits held {hold_ms} ms"
    ));
    // The source agent pools what it reads from now on, and its warm set by a scan,
    // as valid for this snapshot: published only after the snapshot is complete.
    if let Some(sh) = parent
        .sharing
        .as_ref()
        .filter(|_| parent.role == Role::Source && opts.sharing)
    {
        let t = Instant::now();
        let offer = sharing::offer_warm_set(ctx, sh, snapshot_lsn);
        warm_set_frames = offer.as_ref().ok().copied();
        match offer {
            Ok(frames) => say(&format!(
                "source's warm set offered for sharing: {frames} frames in {} ms",
                ms(t)
            )),
            Err(e) => say(&format!("page sharing will start cold: {e:#}")),
        }
        phases.share_scan = ms(t);
    }

    // 2. Lazy clone of the snapshot, attached for the new server.
    let t = Instant::now();
    store.clone(
        &snapshot,
        new,
        CloneOptions {
            hydrate: true,
            rate: opts.rate,
            region_size: store.recommended_region_size(),
        },
    )?;
    let mp = mount_new_volume(ctx, &mut undo, new, None)?;
    phases.clone_and_attach = ms(t);
    failpoint(ctx, "after-attach", new)?;
    say(&format!("lazy clone {new} attached at {}", mp.display()));
    let io_limit = match opts.read_iops {
        Some(iops) => {
            let l = limit_reads(ctx, &mut undo, new, iops)?;
            say(&format!(
                "{new}'s reads on its volume (device {}) limited to {iops}/s",
                l.device
            ));
            Some(l)
        }
        None => None,
    };

    // 3. Priority hydration: what the server reads to boot, then the source's hot
    //    pages in LRU order. A hint only: failures cost speed, not correctness.
    let t = Instant::now();
    let datadir = mp.join("data");
    let mut ranges = crate::prefetch::boot_ranges(&datadir);
    let hot_ranges =
        crate::prefetch::hot_page_ranges(&datadir, &parent.config.datadir, &spaces, &hot);
    ranges.extend(hot_ranges);
    let ranges = crate::prefetch::coalesce(ranges);
    if opts.prefetch && !ranges.is_empty() {
        if let Err(e) = control::call(
            &run.control_socket(new),
            &Request::Prefetch {
                ranges: ranges.clone(),
            },
        ) {
            tracing::warn!("prefetch of {new} failed: {e}");
        }
    }
    phases.prefetch = ms(t);
    failpoint(ctx, "after-prefetch", new)?;
    if opts.hydrate_first {
        let t = Instant::now();
        crate::volume_cmd::hydrate_through_export(&run, new)?;
        say(&format!(
            "{new} fully hydrated before start in {} ms",
            ms(t)
        ));
        phases.prefetch += ms(t);
    }
    say(&format!(
        "prefetch: {} ranges queued ({} hot pages)",
        ranges.len(),
        hot.len()
    ));

    // 4. The new server: own server_id, port, socket and run dir; crash recovery runs
    //    on start. 5. Replication from the parent from the recorded GTID, read_only.
    let used: Vec<u32> = reg.list()?.iter().map(|r| r.config.server_id).collect();
    let mut cfg = InstanceConfig::in_dir(
        new,
        &reg.run_dir(new),
        port,
        dbinstance::next_server_id(used),
    );
    cfg.datadir = datadir;
    cfg.buffer_pool_size = opts.buffer_pool.unwrap_or(parent.config.buffer_pool_size);
    cfg.read_only = true;
    if opts.cold_buffer_pool {
        cfg.extra
            .insert("innodb_buffer_pool_load_at_startup".into(), "OFF".into());
    }
    std::fs::create_dir_all(&cfg.run_dir)?;
    let (mut sharing, mut sharing_off) = (None, None);
    match (&parent.sharing, parent.role) {
        _ if !opts.sharing => {
            sharing_off = Some("turned off for this replica (clone --no-sharing)".into())
        }
        (Some(psh), Role::Source) => match Sharing::detect(ctx).and_then(|s| {
            s.ensure_daemon(ctx)
                .map(|()| s)
                .map_err(|e| format!("{e:#}"))
        }) {
            Ok(s) => {
                let (preload, env, rec) =
                    s.replica_env(ctx, psh.family_id, &cfg.run_dir, snapshot_lsn);
                cfg.preload = preload;
                cfg.env = env;
                sharing = Some(SharingRecord {
                    domain_id: cfg.server_id,
                    ..rec
                });
            }
            Err(why) => sharing_off = Some(why),
        },
        (Some(_), Role::Replica) => {
            // A replica's LSNs after its clone are its own sequence: its snapshot LSN
            // cannot be compared with the source's page LSNs in the pool.
            sharing_off = Some(format!(
                "{src} is a replica; page sharing is only from a family's source"
            ))
        }
        (None, _) => {
            sharing_off = Some(
                parent
                    .sharing_off
                    .clone()
                    .unwrap_or_else(|| format!("{src} runs without page sharing")),
            )
        }
    }
    {
        let (reg_dir, n) = (ctx.store_dir.clone(), new.to_string());
        undo.push(format!("run dir of {new}"), move || {
            Registry::new(&reg_dir).purge(&n);
            Ok(())
        });
    }
    let (_inst, timings) = dbinstance::start_replica(
        &src_inst,
        cfg.clone(),
        &gtid,
        &start_options(ctx, sharing.as_ref(), io_limit.as_ref()),
    )
    .with_context(|| format!("starting replica {new}"))?;
    {
        let cfg = cfg.clone();
        undo.push(format!("server {new}"), move || kill_and_wait(cfg));
    }
    if let Some(sh) = &sharing {
        let (dir, domain) = (ctx.store_dir.clone(), sh.domain_id);
        undo.push(format!("family membership of {new}"), move || {
            sharing::leave(&Ctx::new(&dir)?, domain);
            Ok(())
        });
    }
    phases.start = timings.start_ms;
    phases.replication = timings.configure_ms;
    failpoint(ctx, "after-start", new)?;
    // Wall time from the command's start: everything the caller waited for.
    let first_query_ms = ms(t_start);
    say(&format!(
        "{new} answered its first query {first_query_ms} ms after the clone began (server start {} ms); replicating from {src}",
        timings.start_ms
    ));

    let rec = InstanceRecord {
        name: new.to_string(),
        role: Role::Replica,
        family: parent.family.clone(),
        volume: new.to_string(),
        mountpoint: mp,
        config: cfg,
        clone: Some(CloneReport {
            parent: src.to_string(),
            snapshot,
            gtid: gtid.to_string(),
            snapshot_lsn,
            hold_ms,
            hot_pages: hot.len(),
            warm_set_frames,
            prefetch_ranges: ranges.len(),
            phase_ms: phases,
            first_query_ms,
        }),
        sharing,
        sharing_off,
        io_limit,
    };
    reg.save(&rec)?;
    undo.commit();
    tracing::info!(total_ms = ms(t_start), "clone complete");
    Ok(rec)
}

/// `dbfork destroy`: stop the server, detach and delete its volume (and the snapshot
/// it was cloned from), forget it. Replicas of a source go first with
/// `with_replicas`, otherwise a source with replicas is refused.
pub fn destroy(ctx: &Ctx, name: &str, with_replicas: bool, say: Say) -> Result<()> {
    let reg = ctx.registry();
    let rec = reg.load(name)?;
    let children = reg.children(name)?;
    if !children.is_empty() {
        let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
        if !with_replicas {
            bail!(
                "{name} has replicas ({}); destroy them first or pass --with-replicas",
                names.join(", ")
            );
        }
        for c in &children {
            destroy(ctx, &c.name, true, say)?;
        }
    }
    // Every step below tolerates finding its work done already, and the record goes
    // last: a destroy that fails halfway (a mount still busy) is simply run again.
    let mut inst = Instance::open(rec.config.clone())?;
    let pid = inst.pid();
    if inst.is_running() {
        if let Err(e) = inst.stop() {
            tracing::warn!("clean stop of {name} failed ({e}); killing it");
            inst.kill()?;
        }
    }
    // The server says it is down before its process has let go of the mount.
    if let Some(pid) = pid {
        if !crate::tools::wait_until(STOP_TIMEOUT, || !crate::tools::process_alive(pid as u32)) {
            bail!("{name}'s server (pid {pid}) has not exited; run destroy again once it has");
        }
    }
    if let Some(l) = &rec.io_limit {
        crate::io_limit::remove(l)?;
    }
    if attach::load_record(&ctx.run_dir(), &rec.volume)?.is_some() {
        attach::detach(&ctx.store_dir, &rec.volume)?;
    }
    let store = ctx.store()?;
    match store.delete(&rec.volume) {
        Ok(()) | Err(lazyvol::Error::UnknownVolume(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(c) = &rec.clone {
        if store.status(&c.snapshot).is_ok() && store.dependents(&c.snapshot)?.is_empty() {
            store.delete(&c.snapshot)?;
        }
    }
    let _ = std::fs::remove_dir(&rec.mountpoint);
    if let Some(sh) = &rec.sharing {
        sharing::leave(ctx, sh.domain_id);
        if rec.role == Role::Source {
            sharing::destroy_family(ctx, sh);
            crate::orphans::release(
                Path::new(crate::orphans::SHM),
                &ctx.store_dir,
                &crate::orphans::group_roots(),
            );
        }
    }
    reg.remove(name)?;
    reg.purge(name);
    if reg.list()?.is_empty() {
        sharing::stop_daemon(ctx);
    }
    say(&format!("destroyed {name}"));
    Ok(())
}
