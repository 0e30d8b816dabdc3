//! Scenario 1: Time to first read of a clone, per image size: dbfork (snapshot, clone, export
//! start, first 16 KiB read) and QEMU (overlay create, qemu-storage-daemon start,
//! first read). Flat in size is the target. Each figure is the median of a few
//! repetitions, so one slow process start (cold binary, a busy neighbour) does not
//! decide a ratio.

use crate::ctx::Ctx;
use crate::dbfork::CloneSpec;
use crate::image::{self, MIB};
use crate::nbd::{self, READ_LEN};
use crate::procs::timed;
use crate::qemu::{self, Qsd};
use anyhow::{bail, Result};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// Medians over the repetitions of each step; totals also as the minimum, the
/// closest to the intrinsic cost on a loaded machine.
pub struct Row {
    pub size: u64,
    pub import: Duration,
    pub snapshot: Duration,
    pub clone: Duration,
    pub export_start: Duration,
    pub first_read: Duration,
    /// In how many of `reps` repetitions the first read was an on-demand fetch.
    pub on_demand: usize,
    pub reps: usize,
    pub dbfork_total: Duration,
    pub dbfork_min: Duration,
    pub q_overlay: Duration,
    pub q_start: Duration,
    pub q_first_read: Duration,
    pub qemu_total: Duration,
    pub qemu_min: Duration,
}

/// One repetition: (snapshot, clone, export start, first read).
type DbRep = [Duration; 4];
/// (overlay, qsd start, first read).
type QRep = [Duration; 3];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The read lands on the last data MiB of the image: the background hydrator (it
/// runs from the export's start) has not got there yet, so this is an on-demand
/// fetch, not a region the hydrator happened to copy first.
fn probe_offset(size: u64) -> u64 {
    if size >= 128 * MIB {
        (size - MIB) / (64 * MIB) * (64 * MIB)
    } else {
        0
    }
}

struct Prepared {
    size: u64,
    img: std::path::PathBuf,
    vol: String,
    at: u64,
    want: Vec<u8>,
    import: Duration,
    db: Vec<DbRep>,
    q: Vec<QRep>,
    on_demand: usize,
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut sizes = Vec::new();
    for (i, &size) in ctx.plan.ttfr_sizes.iter().enumerate() {
        eprintln!(
            "volbench: time to first read, making a {} image",
            crate::report::human(size)
        );
        let img = ctx.path(&format!("ttfr{i}.raw"));
        image::sparse(&img, size, 1000 + i as u64)?;
        let at = probe_offset(size);
        let mut want = vec![0u8; READ_LEN];
        std::fs::File::open(&img)?.read_exact_at(&mut want, at)?;
        if want.iter().all(|&b| b == 0) {
            bail!("probe offset {at} of the {size}-byte image is a hole");
        }
        let vol = format!("t{i}");
        let (_, import) = timed(|| ctx.db.import(&vol, &img))?;
        sizes.push(Prepared {
            size,
            img,
            vol,
            at,
            want,
            import,
            db: Vec::new(),
            q: Vec::new(),
            on_demand: 0,
        });
    }
    // Round-robin over sizes: a burst of load from a neighbour lands on all sizes
    // alike instead of on whichever size was being measured at the time.
    for k in 0..ctx.plan.ttfr_reps {
        eprintln!(
            "volbench: time to first read, round {}/{}",
            k + 1,
            ctx.plan.ttfr_reps
        );
        for (i, p) in sizes.iter_mut().enumerate() {
            let tag = format!("t{i}r{k}");
            let (rep, on_demand) = dbfork_rep(ctx, &p.vol, &tag, p.at, &p.want)?;
            p.db.push(rep);
            p.on_demand += usize::from(on_demand);
            p.q.push(qemu_rep(
                ctx,
                &p.img,
                &format!("ttfr{i}r{k}"),
                p.at,
                &p.want,
            )?);
        }
    }
    let mut rows = Vec::new();
    for p in sizes {
        ctx.db.delete(&p.vol)?;
        let _ = std::fs::remove_file(&p.img);
        let col = |j: usize| median(p.db.iter().map(|r| r[j]).collect());
        let qcol = |j: usize| median(p.q.iter().map(|r| r[j]).collect());
        let db_totals: Vec<Duration> = p.db.iter().map(|r| r.iter().sum()).collect();
        let q_totals: Vec<Duration> = p.q.iter().map(|r| r.iter().sum()).collect();
        rows.push(Row {
            size: p.size,
            import: p.import,
            snapshot: col(0),
            clone: col(1),
            export_start: col(2),
            first_read: col(3),
            dbfork_total: median(db_totals.clone()),
            on_demand: p.on_demand,
            reps: p.db.len(),
            dbfork_min: db_totals.iter().min().copied().unwrap_or_default(),
            q_overlay: qcol(0),
            q_start: qcol(1),
            q_first_read: qcol(2),
            qemu_total: median(q_totals.clone()),
            qemu_min: q_totals.iter().min().copied().unwrap_or_default(),
        });
    }
    Ok(rows)
}

/// One repetition, and whether its first read was an on-demand fetch (the engine
/// counted one) rather than a region the background hydrator had already copied.
fn dbfork_rep(ctx: &Ctx, vol: &str, tag: &str, at: u64, want: &[u8]) -> Result<(DbRep, bool)> {
    let (snap, clone) = (format!("{tag}-snap"), format!("{tag}-clone"));
    let (_, snapshot) = timed(|| ctx.db.snapshot(vol, &snap))?;
    let spec = CloneSpec {
        hydrate: true,
        region_size: None,
    };
    let (_, clone_t) = timed(|| ctx.db.clone_of(&snap, &clone, spec))?;
    let sock = ctx.sock(&clone);
    let ((mut export, mut conn), export_start) = timed(|| {
        let mut export = ctx.db.export(&clone, &sock)?;
        let conn = nbd::connect(&sock, &clone, &mut export)?;
        Ok((export, conn))
    })?;
    let mut buf = vec![0u8; READ_LEN];
    let (_, first_read) = timed(|| Ok(conn.read(at, &mut buf)?))?;
    if buf != want {
        bail!("first read of {clone} differs from the image");
    }
    drop(conn);
    let on_demand = ctx.db.status(&clone)?["on_demand_fetches"]
        .as_u64()
        .unwrap_or(0);
    export.stop()?;
    ctx.db.delete(&clone)?;
    ctx.db.delete(&snap)?;
    Ok(([snapshot, clone_t, export_start, first_read], on_demand > 0))
}

fn qemu_rep(ctx: &Ctx, img: &Path, tag: &str, at: u64, want: &[u8]) -> Result<QRep> {
    let ov = ctx.path(&format!("{tag}.qcow2"));
    let (_, overlay) = timed(|| qemu::create_overlay(img, &ov, None))?;
    let ((mut qsd, mut conn), start) = timed(|| {
        let mut qsd = Qsd::start(img, &ov, ctx.dir(), tag)?;
        let conn = nbd::connect(&qsd.nbd.clone(), qemu::EXPORT, &mut qsd.guard)?;
        Ok((qsd, conn))
    })?;
    let mut buf = vec![0u8; READ_LEN];
    let (_, first_read) = timed(|| Ok(conn.read(at, &mut buf)?))?;
    if buf != want {
        bail!("first read of the qcow2 overlay differs from the image");
    }
    drop(conn);
    qsd.guard.stop()?;
    let _ = std::fs::remove_file(&ov);
    Ok([overlay, start, first_read])
}
