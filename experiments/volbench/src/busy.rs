//! Scenario 2b: random 16 KiB QD1 reads while the background copy runs at full
//! speed (dbfork's hydrator, unlimited; QEMU's block-stream, speed 0): does the
//! background copy yield to the foreground reads? Same offsets and client as the
//! cold-clone latency runs; the base is in the page cache as there.
//!
//! Both copies run front to back (dbfork's hydrator cursor, QEMU's stream), so the
//! reads go to the last quarter of the image: ahead of the copy, each is a first
//! touch competing with it, not a hit on a region the copy already made local.
//! The report says how far the copy had got when the reads ended.

use crate::ctx::Ctx;
use crate::dbfork::CloneSpec;
use crate::image::MIB;
use crate::nbd;
use crate::qemu::{self, Qsd};
use crate::stats::Latency;
use anyhow::Result;
use serde_json::json;
use std::path::Path;

pub struct Busy {
    pub region: u64,
    pub latency: Latency,
    /// Whether the background copy was still running when the last read returned
    /// (if not, the tail of the run measured an idle, hydrated clone).
    pub copy_outlasted_reads: bool,
    /// How far the copy had got then (0..1): proof that it ran alongside the reads.
    pub copied: f64,
}

pub struct During {
    pub dbfork: Vec<Busy>,
    pub qemu: Vec<Busy>,
}

pub fn run(ctx: &Ctx, base: &Path, snap: &str) -> Result<During> {
    let size = ctx.plan.dense_size;
    let n = ctx.plan.reads.min((size / 4 / MIB) as usize);
    let offsets = nbd::random_offsets_in(size / 4 * 3, size, n, 4242)?;
    // The hydration runs dropped the cache; the cold-clone runs this compares with
    // had the base (and the store's copy of it) cached.
    crate::image::warm(base)?;
    crate::image::warm_tree(ctx.db.store())?;
    let mut dbfork = Vec::new();
    let mut qemu_rows = Vec::new();
    for &rs in &ctx.plan.region_sizes {
        eprintln!(
            "volbench: reads during background copy, {} KiB regions",
            rs / 1024
        );
        let name = format!("busy-{}k", rs / 1024);
        let spec = CloneSpec {
            hydrate: true,
            region_size: Some(rs),
        };
        ctx.db.clone_of(snap, &name, spec)?;
        let sock = ctx.sock(&name);
        let mut g = ctx.db.export(&name, &sock)?;
        let mut c = nbd::connect(&sock, &name, &mut g)?;
        let samples = nbd::read_samples(&mut c, &offsets, base)?;
        drop(c);
        let st = ctx.db.status(&name)?;
        g.stop()?;
        ctx.db.delete(&name)?;
        dbfork.push(Busy {
            region: rs,
            latency: Latency::of(&samples),
            copy_outlasted_reads: st["independent"] == false,
            // Background fetches only: the reads' own on-demand fetches are not
            // progress of the front-to-back copy.
            copied: st["background_fetches"].as_f64().unwrap_or(f64::NAN) * rs as f64 / size as f64,
        });

        let tag = format!("qbusy-{}k", rs / 1024);
        let ov = ctx.path(&format!("{tag}.qcow2"));
        qemu::create_overlay(base, &ov, Some(rs))?;
        let mut q = Qsd::start(base, &ov, ctx.dir(), &tag)?;
        let mut qmp = q.qmp()?;
        let mut c = nbd::connect(&q.nbd.clone(), qemu::EXPORT, &mut q.guard)?;
        qmp.start_stream()?;
        let samples = nbd::read_samples(&mut c, &offsets, base)?;
        let jobs = qmp.execute("query-block-jobs", json!({}))?;
        drop(c);
        drop(qmp);
        q.guard.stop()?;
        std::fs::remove_file(&ov)?;
        qemu_rows.push(Busy {
            region: rs,
            latency: Latency::of(&samples),
            copy_outlasted_reads: jobs.as_array().is_some_and(|j| !j.is_empty()),
            copied: match &jobs[0] {
                serde_json::Value::Null => 1.0,
                j => {
                    j["offset"].as_f64().unwrap_or(f64::NAN) / j["len"].as_f64().unwrap_or(f64::NAN)
                }
            },
        });
    }
    Ok(During {
        dbfork,
        qemu: qemu_rows,
    })
}
