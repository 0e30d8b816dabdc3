//! Scenario 2: Random 16 KiB QD1 read latency before hydration: the raw image
//! (qemu-nbd and dbfork's export of the imported volume), unhydrated dbfork clones
//! at each region size (--no-hydrate, so every read is a first touch that fetches
//! its region), and QEMU's copy-on-read overlay at the same cluster sizes. Plus a
//! sequential QD1 scan of a cold clone, where a bigger region pays off. The base is
//! in the page cache for all of them: this compares engines, not the disk.
//! Repeated in rounds (fresh clones, new offsets), samples pooled.

use crate::ctx::Ctx;
use crate::dbfork::CloneSpec;
use crate::image::MIB;
use crate::nbd;
use crate::qemu::{self, Qsd};
use crate::stats::Latency;
use anyhow::{ensure, Result};
use std::path::Path;
use std::time::Duration;

/// Per region (or cluster) size.
pub struct Cold {
    pub region: u64,
    pub latency: Latency,
    /// On-demand fetches the engine counted, summed over rounds.
    pub fetches: u64,
    /// Sequential QD1 scan of a cold clone/overlay, MiB/s (median over rounds).
    pub seq_mib_s: f64,
}

pub struct Before {
    pub raw_qemu_nbd: Latency,
    pub raw_dbfork: Latency,
    pub unhydrated: Vec<Cold>,
    pub qemu_cor: Vec<Cold>,
    /// Bytes each sequential scan reads.
    pub seq_len: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Acc {
    samples: Vec<Duration>,
    fetches: u64,
    seq: Vec<f64>,
}

impl Acc {
    fn new() -> Acc {
        Acc {
            samples: Vec::new(),
            fetches: 0,
            seq: Vec::new(),
        }
    }
    fn done(self, region: u64) -> Cold {
        Cold {
            region,
            latency: Latency::of(&self.samples),
            fetches: self.fetches,
            seq_mib_s: median(self.seq) / MIB as f64,
        }
    }
}

pub fn run(ctx: &Ctx, base: &Path, base_vol: &str, snap: &str) -> Result<Before> {
    let sizes = &ctx.plan.region_sizes;
    let seq_len = (64 * MIB).min(ctx.plan.dense_size / 2);
    let mut raw_q = Vec::new();
    let mut raw_d = Vec::new();
    let mut cold: Vec<Acc> = sizes.iter().map(|_| Acc::new()).collect();
    let mut qcold: Vec<Acc> = sizes.iter().map(|_| Acc::new()).collect();
    let rounds = ctx.plan.latency_rounds.max(1);
    for k in 0..rounds {
        eprintln!("volbench: read latency, round {}/{rounds}", k + 1);
        let offsets = nbd::random_offsets(ctx.plan.dense_size, ctx.plan.reads, 42 + k as u64)?;

        let sock = ctx.sock("raw-qemu-nbd");
        let mut g = qemu::qemu_nbd_raw(base, &sock, &ctx.log("raw-qemu-nbd"))?;
        let mut c = nbd::connect(&sock, qemu::EXPORT, &mut g)?;
        raw_q.extend(nbd::read_samples(&mut c, &offsets, base)?);
        drop(c);
        g.stop()?;

        let sock = ctx.sock(base_vol);
        let mut g = ctx.db.export(base_vol, &sock)?;
        let mut c = nbd::connect(&sock, base_vol, &mut g)?;
        raw_d.extend(nbd::read_samples(&mut c, &offsets, base)?);
        drop(c);
        g.stop()?;

        for (j, &rs) in sizes.iter().enumerate() {
            let spec = CloneSpec {
                hydrate: false,
                region_size: Some(rs),
            };
            // Random reads on one cold clone, the scan on another: the random
            // reads touch nearly every 1 MiB of the image.
            for scan in [false, true] {
                let name = format!("cold-{}k-r{k}{}", rs / 1024, if scan { "-seq" } else { "" });
                ctx.db.clone_of(snap, &name, spec)?;
                let sock = ctx.sock(&name);
                let mut g = ctx.db.export(&name, &sock)?;
                let mut c = nbd::connect(&sock, &name, &mut g)?;
                if scan {
                    cold[j].seq.push(nbd::sequential(&mut c, 0, seq_len, base)?);
                } else {
                    cold[j]
                        .samples
                        .extend(nbd::read_samples(&mut c, &offsets, base)?);
                }
                drop(c);
                let st = ctx.db.status(&name)?;
                g.stop()?;
                ensure!(
                    st["independent"] == false,
                    "{name} hydrated although made with --no-hydrate"
                );
                if !scan {
                    cold[j].fetches += st["on_demand_fetches"].as_u64().unwrap_or(0);
                }
                ctx.db.delete(&name)?;
            }

            for scan in [false, true] {
                let tag = format!(
                    "qcold-{}k-r{k}{}",
                    rs / 1024,
                    if scan { "-seq" } else { "" }
                );
                let ov = ctx.path(&format!("{tag}.qcow2"));
                qemu::create_overlay(base, &ov, Some(rs))?;
                let mut q = Qsd::start(base, &ov, ctx.dir(), &tag)?;
                let mut c = nbd::connect(&q.nbd.clone(), qemu::EXPORT, &mut q.guard)?;
                if scan {
                    qcold[j]
                        .seq
                        .push(nbd::sequential(&mut c, 0, seq_len, base)?);
                } else {
                    qcold[j]
                        .samples
                        .extend(nbd::read_samples(&mut c, &offsets, base)?);
                }
                drop(c);
                q.guard.stop()?;
                std::fs::remove_file(&ov)?;
            }
        }
    }
    Ok(Before {
        raw_qemu_nbd: Latency::of(&raw_q),
        raw_dbfork: Latency::of(&raw_d),
        unhydrated: cold
            .into_iter()
            .zip(sizes)
            .map(|(a, &rs)| a.done(rs))
            .collect(),
        qemu_cor: qcold
            .into_iter()
            .zip(sizes)
            .map(|(a, &rs)| a.done(rs))
            .collect(),
        seq_len,
    })
}
