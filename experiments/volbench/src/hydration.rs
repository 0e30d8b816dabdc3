//! Scenario 3: Background hydration of the dense image, page cache dropped first,
//! against `cp` of the same file and QEMU `block-stream`; then the read latency of
//! the fully hydrated result (the latency table's "hydrated" rows). Repeated in
//! rounds that visit every engine once, medians reported.

use crate::ctx::Ctx;
use crate::dbfork::CloneSpec;
use crate::image;
use crate::nbd;
use crate::procs;
use crate::qemu::{self, Qsd};
use crate::stats::Latency;
use anyhow::{ensure, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Default)]
pub struct Copy {
    /// Until the engine says done (dbfork: independent, durable by its own rules;
    /// QEMU: the job is gone; cp: cp exited).
    pub done: Duration,
    /// `done` plus a sync(2) right after: every byte on disk.
    pub durable: Duration,
}

pub struct After {
    /// (region size, copy times, latency of the hydrated clone, background fetches)
    pub dbfork: Vec<(u64, Copy, Latency, u64)>,
    pub cp: Copy,
    /// (qcow2 cluster size, copy times, latency after the stream)
    pub qemu: Vec<(u64, Copy, Latency)>,
}

fn drop_caches(ctx: &Ctx) {
    if ctx.caches_dropped {
        image::drop_caches();
    }
}

fn then_sync(start: Instant) -> Copy {
    let done = start.elapsed();
    image::sync_all();
    Copy {
        done,
        durable: start.elapsed(),
    }
}

/// The run with the median durable time (its own `done` with it, so both figures
/// come from one run).
fn median_copy(runs: &[Copy]) -> Copy {
    let mut v = runs.to_vec();
    v.sort_by_key(|c| c.durable);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn dbfork_run(
    ctx: &Ctx,
    name: &str,
    rs: u64,
    base: &Path,
    snap: &str,
    offsets: &[u64],
) -> Result<(Copy, Vec<Duration>, u64)> {
    let spec = CloneSpec {
        hydrate: true,
        region_size: Some(rs),
    };
    ctx.db.clone_of(snap, name, spec)?;
    drop_caches(ctx);
    let sock = ctx.sock(name);
    let start = Instant::now();
    let mut g = ctx.db.export(name, &sock)?;
    let st = ctx.db.wait_independent(name, &mut g)?;
    let copy = then_sync(start);
    let fetches = st["background_fetches"].as_u64().unwrap_or(0);
    ensure!(
        st["hydrated_bytes"].as_u64() == Some(ctx.plan.dense_size),
        "{name} independent with hydrated_bytes {} of {}",
        st["hydrated_bytes"],
        ctx.plan.dense_size
    );
    let mut c = nbd::connect(&sock, name, &mut g)?;
    let lat = nbd::read_samples(&mut c, offsets, base)?;
    drop(c);
    g.stop()?;
    ctx.db.delete(name)?;
    Ok((copy, lat, fetches))
}

fn cp_run(ctx: &Ctx, base: &Path) -> Result<Copy> {
    drop_caches(ctx);
    let dst = ctx.path("cp-copy.raw");
    let start = Instant::now();
    let mut cmd = Command::new("cp");
    cmd.arg(base).arg(&dst);
    procs::run(cmd)?;
    let copy = then_sync(start);
    std::fs::remove_file(&dst)?;
    Ok(copy)
}

fn qemu_run(
    ctx: &Ctx,
    tag: &str,
    rs: u64,
    base: &Path,
    offsets: &[u64],
) -> Result<(Copy, Vec<Duration>)> {
    let ov = ctx.path(&format!("{tag}.qcow2"));
    qemu::create_overlay(base, &ov, Some(rs))?;
    drop_caches(ctx);
    let mut q = Qsd::start(base, &ov, ctx.dir(), tag)?;
    let mut qmp = q.qmp()?;
    let start = Instant::now();
    qmp.start_stream()?;
    qmp.wait_jobs_done()?;
    let copy = then_sync(start);
    let mut c = nbd::connect(&q.nbd.clone(), qemu::EXPORT, &mut q.guard)?;
    let lat = nbd::read_samples(&mut c, offsets, base)?;
    drop(c);
    drop(qmp);
    q.guard.stop()?;
    std::fs::remove_file(&ov)?;
    Ok((copy, lat))
}

pub fn run(ctx: &Ctx, base: &Path, snap: &str) -> Result<After> {
    let sizes = &ctx.plan.region_sizes;
    let reps = ctx.plan.hydration_reps.max(1);
    let mut db: Vec<Vec<Copy>> = vec![Vec::new(); sizes.len()];
    let mut db_lat: Vec<Vec<Duration>> = vec![Vec::new(); sizes.len()];
    let mut db_fetches = vec![0u64; sizes.len()];
    let mut q: Vec<Vec<Copy>> = vec![Vec::new(); sizes.len()];
    let mut q_lat: Vec<Vec<Duration>> = vec![Vec::new(); sizes.len()];
    let mut cp = Vec::new();
    for k in 0..reps {
        eprintln!("volbench: hydration, round {}/{reps}", k + 1);
        let offsets = nbd::random_offsets(ctx.plan.dense_size, ctx.plan.reads, 42 + k as u64)?;
        for (j, &rs) in sizes.iter().enumerate() {
            let name = format!("hyd-{}k-r{k}", rs / 1024);
            let (copy, lat, fetches) = dbfork_run(ctx, &name, rs, base, snap, &offsets)?;
            db[j].push(copy);
            db_lat[j].extend(lat);
            db_fetches[j] = fetches;
        }
        cp.push(cp_run(ctx, base)?);
        for (j, &rs) in sizes.iter().enumerate() {
            let tag = format!("stream-{}k-r{k}", rs / 1024);
            let (copy, lat) = qemu_run(ctx, &tag, rs, base, &offsets)?;
            q[j].push(copy);
            q_lat[j].extend(lat);
        }
    }
    Ok(After {
        dbfork: sizes
            .iter()
            .enumerate()
            .map(|(j, &rs)| {
                (
                    rs,
                    median_copy(&db[j]),
                    Latency::of(&db_lat[j]),
                    db_fetches[j],
                )
            })
            .collect(),
        cp: median_copy(&cp),
        qemu: sizes
            .iter()
            .enumerate()
            .map(|(j, &rs)| (rs, median_copy(&q[j]), Latency::of(&q_lat[j])))
            .collect(),
    })
}
