//! `dbfork source create`: a volume with a filesystem, a fresh MariaDB datadir with
//! binlog and GTID, the server started, recorded as the root of a new family.

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::registry::{InstanceRecord, Role};
use crate::sharing;
use crate::undo::Undo;
use dbinstance::InstanceConfig;
use substrate::{FsType, NewDomain, StartRequest, Stop};

/// What a source's datadir lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VolumeEngine {
    /// A directory volume where the store's file system shares extents, else a block
    /// volume.
    #[default]
    Auto,
    /// A block volume with its own filesystem: lazy clones hydrated over NBD, on any
    /// store.
    Lazy,
    /// A directory on the store's file system (XFS with reflink, btrfs): the server's
    /// IO stays in the kernel, clones share extents and are complete at once.
    Reflink,
}

#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub size: u64,
    pub buffer_pool: u64,
    /// The filesystem of a block volume (a directory volume has the store's).
    pub fs: FsType,
    pub port: Option<u16>,
    /// Region size of a block volume.
    pub region_size: u64,
    pub engine: VolumeEngine,
    /// The domU's xl config (a Xen source).
    pub domain_config: Option<std::path::PathBuf>,
    /// The guest device of the database disk in that config.
    pub database_vdev: String,
}

pub fn create(ctx: &Ctx, name: &str, opts: &SourceOptions) -> Result<InstanceRecord> {
    let sub = ctx.substrate();
    ctx.check_free(name)?;
    sub.preflight()?;
    let port = sub.sql_port(opts.port)?;
    ctx.check_space(opts.size)?;
    let mut undo = Undo::new();
    let domain = make_volume(ctx, name, opts, &mut undo)?;
    let cfg = source_config(ctx, name, port, &domain, opts.buffer_pool, &[], &mut undo)?;
    sub.init_datadir(&cfg)
        .map_err(|e| Error::from(e).doing(name, "initialising the datadir"))?;
    let rec = start_source(ctx, name, cfg, domain, None, &mut undo)?;
    ctx.registry().save(&rec)?;
    undo.commit();
    Ok(rec)
}

/// A new source's volume, attached (its datadir still empty).
pub(crate) fn make_volume<'a>(
    ctx: &'a Ctx,
    name: &'a str,
    opts: &SourceOptions,
    undo: &mut Undo<'a>,
) -> Result<substrate::DomainState> {
    let sub = ctx.substrate();
    let store = ctx.store()?;
    // What stores deleted by hand left on this host goes before this one adds its own.
    let swept = sub.sweep();
    if !swept.items.is_empty() {
        tracing::info!(?swept, "removed what deleted stores left on this host");
    }

    // A domU's disk is a block volume (a directory on dom0's file system is no disk).
    let block_only = sub.kind() == substrate::Kind::Xen;
    let directory = match opts.engine {
        VolumeEngine::Auto => store.supports_reflink() && !block_only,
        VolumeEngine::Lazy => false,
        VolumeEngine::Reflink if block_only => return Err(Error::ReflinkNotADisk),
        VolumeEngine::Reflink => true,
    };
    if directory {
        store.create_directory(name)?;
    } else {
        store.create_with_region_size(name, opts.size, opts.region_size)?;
    }
    undo.push(format!("volume {name}"), move || {
        Ok(ctx.delete_volume(name)?)
    });
    let domain = sub.attach(
        name,
        name,
        &NewDomain::Source {
            fs: opts.fs,
            domain_config: opts.domain_config.as_deref(),
            database_vdev: &opts.database_vdev,
        },
    )?;
    {
        let domain = domain.clone();
        undo.push(format!("attach of {name}"), move || {
            Ok(ctx.substrate().detach(name, &domain)?)
        });
    }
    Ok(domain)
}

/// A new source's server settings, its run dir made: a server_id above every one the
/// store's instances use and `avoid` (ids of servers outside the store it replicates
/// with).
pub(crate) fn source_config<'a>(
    ctx: &'a Ctx,
    name: &'a str,
    port: u16,
    domain: &substrate::DomainState,
    buffer_pool: u64,
    avoid: &[u32],
    undo: &mut Undo<'a>,
) -> Result<InstanceConfig> {
    let mut used: Vec<u32> = ctx
        .registry()
        .list()?
        .iter()
        .map(|r| r.config.server_id)
        .collect();
    used.extend_from_slice(avoid);
    let mut cfg = InstanceConfig::in_dir(
        name,
        &ctx.registry().run_dir(name),
        port,
        dbinstance::next_server_id(used),
    );
    cfg.datadir = ctx.substrate().datadir(domain);
    cfg.buffer_pool_size = buffer_pool;
    // The clone's consistent point reads the GTID position under a commit hold and
    // snapshots the redo log file: every commit must be in that file when it returns
    // (1: written and flushed; MariaDB's default, pinned so no my.cnf can change it).
    cfg.extra
        .insert("innodb_flush_log_at_trx_commit".into(), "1".into());
    std::fs::create_dir_all(&cfg.run_dir)
        .map_err(Error::io("creating the run dir", &cfg.run_dir))?;
    undo.push(format!("run dir of {name}"), move || {
        ctx.registry().purge(name);
        Ok(())
    });
    Ok(cfg)
}

/// Starts a new source's server on its datadir as the root of a new family, and
/// records it.
pub(crate) fn start_source<'a>(
    ctx: &'a Ctx,
    name: &'a str,
    cfg: InstanceConfig,
    mut domain: substrate::DomainState,
    upstream: Option<crate::registry::Upstream>,
    undo: &mut Undo<'a>,
) -> Result<InstanceRecord> {
    let sub = ctx.substrate();
    // Family id = the source's server_id (unique in the store); it is also its domain.
    let plan = sharing::for_source(ctx.sharing_off(), cfg.server_id, cfg.buffer_pool_size);
    if let Some(a) = &plan.agent {
        // Registered before the start: a server that joined the family at the gate
        // and then failed to come up leaves no family behind.
        let family = a.family;
        undo.push(format!("family of {name}"), move || {
            ctx.substrate().destroy_family(family);
            Ok(())
        });
    }
    let (sharing, sharing_off) = sharing::start(
        sub,
        &StartRequest {
            config: &cfg,
            volume: name,
            agent: None,
            read_iops: None,
            timeout: dbinstance::instance::DEFAULT_START_TIMEOUT,
        },
        &mut domain,
        plan,
    )
    .map_err(|e| e.doing(name, "starting the source server"))?;
    {
        let (cfg, domain) = (cfg.clone(), domain.clone());
        undo.push(format!("server {name}"), move || {
            Ok(ctx.substrate().stop(&cfg, &domain, Stop::Kill)?)
        });
    }
    let rec = InstanceRecord {
        name: name.to_string(),
        role: Role::Source,
        family: name.to_string(),
        volume: name.to_string(),
        config: cfg,
        clone: None,
        sharing,
        sharing_off,
        domain,
        run: Some(crate::registry::RunState::started_now()),
        upstream,
        taken_over: None,
    };
    Ok(rec)
}
