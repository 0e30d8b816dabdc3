//! `dbfork clone SRC NEW`: a warm read replica of a live instance, as named steps.
//!
//! 1. consistent snapshot: the parent's dirty pages flushed, its warm set read, its
//!    binary log rotated, commits held while its filesystem is quiesced and its volume
//!    snapshotted (GTID position and durable LSN read under the hold);
//! 2. warm-set offer: the family's source offers its buffer pool under the snapshot's
//!    LSN (page sharing only);
//! 3. lazy clone: a clone of the snapshot that hydrates on demand and in the
//!    background, attached to the new domain;
//! 4. hydration queue: what the server reads to boot, then the warm set's pages,
//!    moved to the front of the clone's hydration;
//! 5. replica start: the new server (own server_id and port), in its family and read
//!    limit from its first instruction; crash recovery runs here;
//! 6. replication: from the parent, right after the snapshot's GTID position.
//!
//! Each step registers how to undo what it made; a failure anywhere unwinds all of it
//! in reverse and names the step.

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::registry::{CloneReport, InstanceRecord, PhaseTimes, Role};
use crate::sharing;
pub use crate::step::Step;
use crate::undo::Undo;
use crate::volumes;
use dbinstance::{GtidPos, InstanceConfig};
use lazyvol::CloneOptions;
use std::time::{Duration, Instant};
use substrate::{DomainState, Endpoint, NewDomain, StartRequest, Stop, WarmSet};

/// How long a clone lets the parent flush dirty pages before going ahead.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Progress lines while a clone runs (the CLI prints them; --json stays quiet).
pub type Say<'a> = &'a dyn Fn(&str);

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
    /// Flush the parent's dirty pages before the consistent point.
    pub flush: bool,
    /// Memory and vCPUs of a new domU (default: the parent's).
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
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
            flush: true,
            memory_mib: None,
            vcpus: None,
        }
    }
}

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// What the consistent snapshot step found.
struct Point {
    snapshot: String,
    gtid: GtidPos,
    lsn: u64,
    hold_ms: u64,
    warm: WarmSet,
}

/// One clone in progress: what the steps made so far and how to undo it.
struct Cloning<'a> {
    ctx: &'a Ctx,
    parent: InstanceRecord,
    new: &'a str,
    opts: &'a CloneOpts,
    say: Say<'a>,
    undo: Undo<'a>,
    phases: PhaseTimes,
}

/// `dbfork clone SRC NEW`.
pub fn clone(
    ctx: &Ctx,
    src: &str,
    new: &str,
    opts: &CloneOpts,
    say: Say,
) -> Result<InstanceRecord> {
    let t_start = Instant::now();
    let sub = ctx.substrate();
    let parent = ctx.registry().load(src)?;
    ctx.check_free(new)?;
    if !sub.running(&parent.config, &parent.domain) {
        return Err(Error::NotRunning(src.to_string()));
    }
    let parent_db = sub.endpoint(&parent.config, &parent.domain)?;
    parent_db
        .require_binlog()
        .map_err(|source| Error::NotASource {
            name: src.to_string(),
            source: Box::new(source),
        })?;
    // 0 leaves commits out of the redo log file for up to a second: the snapshot
    // would miss transactions the GTID read under the hold says it has (1 and 2 both
    // write the file at commit, which is what a snapshot of the file takes).
    if parent_db.redo_flush_at_commit()? == 0 {
        return Err(Error::LazyRedo {
            name: src.to_string(),
        });
    }
    let port = sub.sql_port(opts.port)?;
    let src_size = ctx.store()?.status(&parent.volume)?.size;
    ctx.check_space(src_size)?;

    let mut c = Cloning {
        ctx,
        parent,
        new,
        opts,
        say,
        undo: Undo::new(),
        phases: PhaseTimes::default(),
    };
    let point = c.step(Step::ConsistentSnapshot, |c| {
        c.consistent_snapshot(parent_db.as_ref())
    })?;
    let warm_set_frames = c.step(Step::WarmSetOffer, |c| Ok(c.warm_set_offer(point.lsn)))?;
    let mut domain = c.step(Step::LazyClone, |c| c.lazy_clone(&point.snapshot))?;
    let prefetch_ranges = c.step(Step::HydrationQueue, |c| c.hydration_queue(&domain, &point))?;
    let (config, sharing, sharing_off) = c.step(Step::ReplicaStart, |c| {
        c.replica_start(&mut domain, port, point.lsn)
    })?;
    c.step(Step::Replication, |c| {
        c.replication(parent_db.as_ref(), &config, &domain, &point.gtid)
    })?;
    // Wall time from the command's start: everything the caller waited for.
    let first_query_ms = ms(t_start);
    say(&format!(
        "{new} answered its first query {first_query_ms} ms after the clone began (server start {} ms); replicating from {src}",
        c.phases.start
    ));

    let rec = InstanceRecord {
        name: new.to_string(),
        role: Role::Replica,
        family: c.parent.family.clone(),
        volume: new.to_string(),
        config,
        clone: Some(CloneReport {
            parent: src.to_string(),
            snapshot: point.snapshot,
            gtid: point.gtid.to_string(),
            snapshot_lsn: point.lsn,
            hold_ms: point.hold_ms,
            hot_pages: point.warm.hot.len(),
            warm_set_frames,
            prefetch_ranges,
            phase_ms: c.phases.clone(),
            first_query_ms,
        }),
        sharing,
        sharing_off,
        domain,
        run: Some(crate::registry::RunState::started_now()),
        upstream: None,
        taken_over: None,
    };
    c.step(Step::Record, |c| c.ctx.registry().save(&rec))?;
    c.undo.commit();
    tracing::info!(total_ms = ms(t_start), "clone complete");
    Ok(rec)
}

impl<'a> Cloning<'a> {
    /// Runs one step; its error names the step and the new instance.
    fn step<T>(&mut self, step: Step, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        f(self).map_err(|e| Error::Step {
            instance: self.new.to_string(),
            step,
            source: Box::new(e),
        })
    }

    fn consistent_snapshot(&mut self, parent_db: &dyn Endpoint) -> Result<Point> {
        let (ctx, src) = (self.ctx, self.parent.name.clone());
        // Dirty pages flushed first: the replica's crash recovery has less to redo, and
        // clean frames are the ones it can share. Bounded; a busy source is cloned anyway.
        // Skipped on request, and by the flush itself while the parent takes writes
        // (see dbinstance::flush).
        let t = Instant::now();
        match self
            .opts
            .flush
            .then(|| parent_db.flush_dirty_pages(64, FLUSH_TIMEOUT))
        {
            Some(Ok(f)) if f.skipped_while_writing.is_some() => (self.say)(&format!(
                "{src} is taking writes: its {} dirty pages are left to the replica's crash recovery (a flush now would delay {src}'s commits)",
                f.dirty_before
            )),
            Some(Ok(f)) if f.dirty_before > 64 => (self.say)(&format!(
                "flushed {src}'s dirty pages: {} -> {} in {} ms",
                f.dirty_before, f.dirty_after, f.ms
            )),
            Some(Ok(_)) | None => {}
            Some(Err(e)) => tracing::warn!(
                "flushing {src} before the clone: {}",
                crate::error::chain(&e)
            ),
        }
        self.phases.flush = ms(t);
        // The warm set first, outside the hold.
        let warm = parent_db.warm_set().unwrap_or_else(|e| {
            tracing::warn!("no warm set from {src}: {}", crate::error::chain(&e));
            WarmSet::default()
        });

        let t = Instant::now();
        let snapshot = format!("{src}.at.{}", self.new);
        // A fresh binary log first: the replica's crash recovery scans the last binlog
        // file of its snapshot, which under a write load grows to max_binlog_size (1
        // GiB), minutes of reading on slow storage; rotated here, it holds only what
        // commits in the moment before the hold.
        if let Err(e) = parent_db.rotate_binlog() {
            tracing::warn!(
                "rotating {src}'s binary log before the clone: {}",
                crate::error::chain(&e)
            );
        }
        let store = ctx.store()?;
        let hold = parent_db.hold_commits()?;
        let (gtid, lsn) = (hold.gtid().clone(), hold.lsn());
        let snapped = ctx
            .substrate()
            .quiesce(
                &self.parent.volume,
                &self.parent.config,
                &self.parent.domain,
            )
            .map_err(Error::from)
            .and_then(|held| {
                volumes::snapshot(
                    &store,
                    &ctx.run_dir(),
                    &self.parent.volume,
                    &snapshot,
                    &held,
                )
            });
        if snapped.is_ok() {
            let s = snapshot.clone();
            self.undo.push(format!("snapshot {snapshot}"), move || {
                Ok(ctx.store()?.delete(&s)?)
            });
        }
        let hold_ms = hold.release()?;
        snapped?;
        self.phases.consistent_point = ms(t);
        (self.say)(&format!(
            "consistent point: gtid {gtid}, lsn {lsn}, commits held {hold_ms} ms"
        ));
        Ok(Point {
            snapshot,
            gtid,
            lsn,
            hold_ms,
            warm,
        })
    }

    /// The source's agent pools what it reads from now on, and its warm set by a scan,
    /// as valid for this snapshot: published only after the snapshot is complete. A
    /// failure costs sharing speed, never the clone.
    fn warm_set_offer(&mut self, lsn: u64) -> Option<u64> {
        let family = self
            .parent
            .sharing
            .as_ref()
            .filter(|_| self.parent.role == Role::Source && self.opts.sharing)?
            .family_id;
        let t = Instant::now();
        let offer = sharing::offer_warm_set(self.ctx.substrate(), &self.parent, family, lsn);
        self.phases.share_scan = ms(t);
        match offer {
            Ok(frames) => {
                (self.say)(&format!(
                    "source's warm set offered for sharing: {frames} frames in {} ms",
                    ms(t)
                ));
                Some(frames)
            }
            Err(e) => {
                (self.say)(&format!(
                    "page sharing will start cold: {}",
                    crate::error::chain(&e)
                ));
                None
            }
        }
    }

    fn lazy_clone(&mut self, snapshot: &str) -> Result<DomainState> {
        let (ctx, new) = (self.ctx, self.new);
        let t = Instant::now();
        let store = ctx.store()?;
        store.clone(
            snapshot,
            new,
            CloneOptions {
                hydrate: true,
                rate: self.opts.rate,
                region_size: store.recommended_region_size(),
            },
        )?;
        self.undo
            .push(format!("volume {new}"), move || Ok(ctx.delete_volume(new)?));
        let domain = ctx.substrate().attach(
            new,
            new,
            &NewDomain::CloneOf {
                parent_name: &self.parent.name,
                family: &self.parent.family,
                parent: &self.parent.domain,
                memory_mib: self.opts.memory_mib,
                vcpus: self.opts.vcpus,
            },
        )?;
        {
            let domain = domain.clone();
            self.undo.push(format!("attach of {new}"), move || {
                Ok(ctx.substrate().detach(new, &domain)?)
            });
        }
        self.phases.clone_and_attach = ms(t);
        let how = match store.status(new)?.layout {
            lazyvol::VolumeLayout::Blocks => "lazy clone",
            lazyvol::VolumeLayout::Directory => "reflink clone",
        };
        (self.say)(&format!("{how} {new} attached at {}", domain.attached_at()));
        Ok(domain)
    }

    /// A hint: a failure costs speed, not correctness (except `--hydrate-first`, which
    /// promises a full copy before the start).
    fn hydration_queue(&mut self, domain: &DomainState, point: &Point) -> Result<usize> {
        let (ctx, new) = (self.ctx, self.new);
        let t = Instant::now();
        let ranges =
            ctx.substrate()
                .hydration_order(domain, &self.parent.config.datadir, &point.warm);
        if self.opts.prefetch && !ranges.is_empty() {
            if let Err(e) = volumes::queue_first(&ctx.run_dir(), new, &ranges) {
                tracing::warn!("prefetch of {new} failed: {}", crate::error::chain(&e));
            }
        }
        self.phases.prefetch = ms(t);
        if self.opts.hydrate_first {
            let t = Instant::now();
            volumes::hydrate(&ctx.store()?, &ctx.run_dir(), new, &mut |_, _| {})?;
            (self.say)(&format!(
                "{new} fully hydrated before start in {} ms",
                ms(t)
            ));
            self.phases.prefetch += ms(t);
        }
        (self.say)(&format!(
            "prefetch: {} ranges queued ({} hot pages)",
            ranges.len(),
            point.warm.hot.len()
        ));
        Ok(ranges.len())
    }

    /// The new server: own server_id, port and run dir; crash recovery runs on start.
    fn replica_start(
        &mut self,
        domain: &mut DomainState,
        port: u16,
        snapshot_lsn: u64,
    ) -> Result<(
        InstanceConfig,
        Option<crate::registry::Membership>,
        Option<String>,
    )> {
        let (ctx, new, opts) = (self.ctx, self.new, self.opts);
        let reg = ctx.registry();
        let used: Vec<u32> = reg.list()?.iter().map(|r| r.config.server_id).collect();
        let mut cfg = InstanceConfig::in_dir(
            new,
            &reg.run_dir(new),
            port,
            dbinstance::next_server_id(used),
        );
        cfg.datadir = ctx.substrate().datadir(domain);
        cfg.buffer_pool_size = opts
            .buffer_pool
            .unwrap_or(self.parent.config.buffer_pool_size);
        cfg.read_only = true;
        // What the parent's data files were made with (an adopted copy's layout) and
        // the adopted server's settings that change what its data means.
        let backup = dbinstance::backup::CARRIED
            .into_iter()
            .chain(dbinstance::backup::INHERITED);
        for k in backup {
            if let Some(v) = self.parent.config.extra.get(k) {
                cfg.extra.insert(k.into(), v.clone());
            }
        }
        // A read replica does not fsync its redo log per replicated transaction (once a
        // second instead): on a disk it shares with its source, that fsync per
        // transaction is what took the source's IO (docs/architecture.md, "Replica
        // durability"). Still crash safe for replication: its position is in InnoDB
        // (mysql.gtid_slave_pos) with the data it covers, and a host crash loses at
        // most the last second, fetched again from the parent. Its own clones stay
        // consistent: the redo of every commit is written to the file at commit, and
        // a snapshot takes what was written (the consistent point holds commits).
        cfg.extra
            .insert("innodb_flush_log_at_trx_commit".into(), "2".into());
        if opts.cold_buffer_pool {
            cfg.extra
                .insert("innodb_buffer_pool_load_at_startup".into(), "OFF".into());
        }
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(Error::io("creating the run dir", &cfg.run_dir))?;
        self.undo.push(format!("run dir of {new}"), move || {
            ctx.registry().purge(new);
            Ok(())
        });
        let plan = sharing::for_replica(
            &self.parent,
            opts.sharing,
            ctx.sharing_off(),
            cfg.server_id,
            snapshot_lsn,
        );
        if let Some(a) = &plan.agent {
            // Registered before the start: a server that joined its family at the gate
            // and then failed to come up must not stay a member.
            let d = a.domain;
            self.undo
                .push(format!("family membership of {new}"), move || {
                    ctx.substrate().leave_family(d);
                    Ok(())
                });
        }
        let t = Instant::now();
        let started = sharing::start(
            ctx.substrate(),
            &StartRequest {
                config: &cfg,
                volume: new,
                agent: None,
                read_iops: opts.read_iops,
                timeout: dbinstance::instance::DEFAULT_START_TIMEOUT,
            },
            domain,
            plan,
        )?;
        self.phases.start = ms(t);
        {
            let (cfg, domain) = (cfg.clone(), domain.clone());
            self.undo.push(format!("server {new}"), move || {
                Ok(ctx.substrate().stop(&cfg, &domain, Stop::Kill)?)
            });
        }
        if let Some(l) = ctx.substrate().read_limit(domain) {
            (self.say)(&format!(
                "{new}'s reads on its volume (device {}) limited to {}/s",
                l.device, l.read_iops
            ));
        }
        Ok((cfg, started.0, started.1))
    }

    /// Replication from the parent from the snapshot's GTID position, read_only.
    fn replication(
        &mut self,
        parent_db: &dyn Endpoint,
        config: &InstanceConfig,
        domain: &DomainState,
        gtid: &GtidPos,
    ) -> Result<()> {
        let t = Instant::now();
        let source = parent_db.replication_source()?;
        self.ctx
            .substrate()
            .endpoint(config, domain)?
            .replicate_from(&source, gtid)?;
        self.phases.replication = ms(t);
        Ok(())
    }
}
