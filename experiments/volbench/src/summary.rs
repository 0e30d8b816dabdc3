//! The report: ratios first, then the absolute figures behind them, then the
//! region size recommendation with the rule that picked it.

use crate::busy::During;
use crate::ctx::Ctx;
use crate::hydration::{After, Copy};
use crate::latency::Before;
use crate::report::{human, ms, ratio, us, Report, Table};
use crate::stats::Latency;
use crate::ttfr;
use std::time::Duration;

/// The engine's default region size (lazyvol DEFAULT_REGION_SIZE), the one the
/// headline ratios use.
const DEFAULT_REGION: u64 = 256 << 10;
/// qcow2's default cluster size, QEMU's copy-on-read unit out of the box.
const QCOW2_DEFAULT_CLUSTER: u64 = 64 << 10;

const NAN_LAT: Latency = Latency {
    p50_us: f64::NAN,
    p99_us: f64::NAN,
    mean_us: f64::NAN,
};

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Lookups by region (or cluster) size; NaN where a size was not measured, which
/// the ratio printer shows as n/a.
struct Data<'a> {
    size: u64,
    before: &'a Before,
    after: &'a After,
    during: &'a During,
}

impl Data<'_> {
    fn cold(&self, rs: u64) -> Latency {
        let u = &self.before.unhydrated;
        u.iter()
            .find(|c| c.region == rs)
            .map_or(NAN_LAT, |c| c.latency)
    }
    fn qemu_cold(&self, rs: u64) -> Latency {
        let q = &self.before.qemu_cor;
        q.iter()
            .find(|c| c.region == rs)
            .map_or(NAN_LAT, |c| c.latency)
    }
    fn busy(&self, rs: u64) -> Latency {
        let b = &self.during.dbfork;
        b.iter()
            .find(|c| c.region == rs)
            .map_or(NAN_LAT, |c| c.latency)
    }
    fn qemu_busy(&self, rs: u64) -> Latency {
        let b = &self.during.qemu;
        b.iter()
            .find(|c| c.region == rs)
            .map_or(NAN_LAT, |c| c.latency)
    }
    fn seq(&self, rs: u64) -> f64 {
        let u = &self.before.unhydrated;
        u.iter()
            .find(|c| c.region == rs)
            .map_or(f64::NAN, |c| c.seq_mib_s)
    }
    fn qemu_seq(&self, rs: u64) -> f64 {
        let q = &self.before.qemu_cor;
        q.iter()
            .find(|c| c.region == rs)
            .map_or(f64::NAN, |c| c.seq_mib_s)
    }
    fn hyd_lat(&self, rs: u64) -> Latency {
        let d = &self.after.dbfork;
        d.iter().find(|r| r.0 == rs).map_or(NAN_LAT, |r| r.2)
    }
    fn hyd_rate(&self, rs: u64) -> f64 {
        let d = &self.after.dbfork;
        d.iter()
            .find(|r| r.0 == rs)
            .map_or(f64::NAN, |r| mib_s(self.size, r.1.durable))
    }
    fn qemu_rate(&self, rs: u64) -> f64 {
        let q = &self.after.qemu;
        q.iter()
            .find(|r| r.0 == rs)
            .map_or(f64::NAN, |r| mib_s(self.size, r.1.durable))
    }
}

pub fn write(
    rep: &mut Report,
    ctx: &Ctx,
    ttfr: &[ttfr::Row],
    before: &Before,
    after: &After,
    during: &During,
) {
    let size = ctx.plan.dense_size;
    let d = Data {
        size,
        before,
        after,
        during,
    };
    let def = DEFAULT_REGION;
    let qdef = QCOW2_DEFAULT_CLUSTER;
    ratios(rep, ttfr, &d);
    ttfr_table(rep, ctx, ttfr);
    latency_table(rep, ctx, &d);
    hydration_table(rep, ctx, &d);
    region_table(rep, ctx, &d, def, qdef);
}

fn ratios(rep: &mut Report, ttfr: &[ttfr::Row], d: &Data) {
    let (def, qdef) = (DEFAULT_REGION, QCOW2_DEFAULT_CLUSTER);
    let raw = d.before.raw_dbfork;
    let cp = mib_s(d.size, d.after.cp.durable);
    let mut t = Table::new(
        &format!(
            "Ratios (dbfork at its default {} regions, QEMU at qcow2's default {} clusters unless said)",
            human(def),
            human(qdef)
        ),
        &["ratio", "value", "target / meaning"],
    );
    let mut row = |a: String, b: String, c: &str| t.row(vec![a, b, c.to_string()]);
    if let (Some(first), Some(last)) = (ttfr.first(), ttfr.last()) {
        let span = format!("{} / {}", human(last.size), human(first.size));
        let f = |d: Duration| d.as_secs_f64();
        row(
            format!("dbfork time to first read, {span}"),
            ratio(f(last.dbfork_total), f(first.dbfork_total)),
            "flat in size: ~1.0",
        );
        row(
            format!("dbfork time to first read, {span}, fastest run"),
            ratio(f(last.dbfork_min), f(first.dbfork_min)),
            "the same on the minimum, the least disturbed by neighbours",
        );
        row(
            format!("QEMU time to first read, {span}"),
            ratio(f(last.qemu_total), f(first.qemu_total)),
            "the same for qcow2 overlay + qemu-storage-daemon",
        );
        row(
            format!("time to first read, dbfork / QEMU, at {}", human(last.size)),
            ratio(f(last.dbfork_total), f(last.qemu_total)),
            "< 1: dbfork faster (its figure includes a snapshot, QEMU's has none)",
        );
    }
    row(
        "unhydrated clone / raw volume, p50 16K read".into(),
        ratio(d.cold(def).p50_us, raw.p50_us),
        "first-touch cost (region fetch) at QD1, same server",
    );
    row(
        "unhydrated clone / raw volume, mean".into(),
        ratio(d.cold(def).mean_us, raw.mean_us),
        "",
    );
    row(
        "QEMU copy-on-read / qemu-nbd raw, p50".into(),
        ratio(d.qemu_cold(qdef).p50_us, d.before.raw_qemu_nbd.p50_us),
        "QEMU's own first-touch cost",
    );
    row(
        "unhydrated p50, dbfork / QEMU copy-on-read (both defaults)".into(),
        ratio(d.cold(def).p50_us, d.qemu_cold(qdef).p50_us),
        "<= 1: on par or better (DESIGN.md target)",
    );
    row(
        format!("unhydrated p50, dbfork / QEMU, same unit ({})", human(def)),
        ratio(d.cold(def).p50_us, d.qemu_cold(def).p50_us),
        "engine against engine at equal fetch size",
    );
    row(
        "read p50 during full-speed hydration / on an idle cold clone".into(),
        ratio(d.busy(def).p50_us, d.cold(def).p50_us),
        "~1.0: the background copy yields to foreground reads",
    );
    row(
        "the same for QEMU (during block-stream / idle overlay)".into(),
        ratio(d.qemu_busy(qdef).p50_us, d.qemu_cold(qdef).p50_us),
        "",
    );
    row(
        "read p50 during background copy, dbfork / QEMU (both defaults)".into(),
        ratio(d.busy(def).p50_us, d.qemu_busy(qdef).p50_us),
        "<= 1: on par or better",
    );
    row(
        "hydrated clone / raw volume, p50".into(),
        ratio(d.hyd_lat(def).p50_us, raw.p50_us),
        "~1.0: no cost left after hydration",
    );
    row(
        "raw volume served by dbfork / raw file by qemu-nbd, p50".into(),
        ratio(raw.p50_us, d.before.raw_qemu_nbd.p50_us),
        "NBD server overhead alone",
    );
    row(
        "hydration throughput, dbfork / cp (to durable)".into(),
        ratio(d.hyd_rate(def), cp),
        "~1.0: background copy as fast as a plain copy",
    );
    row(
        "hydration throughput, QEMU block-stream / cp".into(),
        ratio(d.qemu_rate(qdef), cp),
        "",
    );
    row(
        "hydration throughput, dbfork / QEMU (both defaults)".into(),
        ratio(d.hyd_rate(def), d.qemu_rate(qdef)),
        ">= 1: on par or better (DESIGN.md target)",
    );
    row(
        format!(
            "hydration throughput, dbfork / QEMU, same unit ({})",
            human(def)
        ),
        ratio(d.hyd_rate(def), d.qemu_rate(def)),
        "",
    );
    rep.table(&t);
}

fn ttfr_table(rep: &mut Report, ctx: &Ctx, ttfr: &[ttfr::Row]) {
    let mut t = Table::new(
        &format!(
            "1. Time to first read of a clone (ms, median of {})",
            ctx.plan.ttfr_reps
        ),
        &[
            "image",
            "import (setup)",
            "snapshot",
            "clone",
            "export start",
            "first 16K read",
            "on-demand",
            "dbfork total",
            "dbfork min",
            "qemu-img overlay",
            "qsd start",
            "qsd first read",
            "QEMU total",
            "QEMU min",
        ],
    );
    for r in ttfr {
        t.row(vec![
            human(r.size),
            ms(r.import),
            ms(r.snapshot),
            ms(r.clone),
            ms(r.export_start),
            ms(r.first_read),
            format!("{}/{}", r.on_demand, r.reps),
            ms(r.dbfork_total),
            ms(r.dbfork_min),
            ms(r.q_overlay),
            ms(r.q_start),
            ms(r.q_first_read),
            ms(r.qemu_total),
            ms(r.qemu_min),
        ]);
    }
    t.note(
        "Images are sparse: random data in the first 16 MiB and the first MiB of every 64th MiB, \
         holes elsewhere (cheap to make at 4 GiB, not all zeroes). Each dbfork step is one `dbfork` \
         process, start-up included; export start = spawn until the NBD handshake succeeds; the \
         first read is 16 KiB in the last data MiB of the image (far from where the background \
         hydrator starts, so an on-demand fetch; 'on-demand' counts the repetitions in which the \
         engine's on_demand_fetches confirms it), its bytes checked. The clone has default options \
         (hydrating in the background). QEMU: `qemu-img create` of the overlay, \
         qemu-storage-daemon spawn until the handshake succeeds, the same read. Totals are the median \
         and the minimum of per-repetition sums; repetitions go round-robin over the sizes so \
         load from neighbours spreads evenly. Import is setup (a sparse copy: / is ext4, no reflink), not in \
         the total.",
    );
    rep.table(&t);
}

fn latency_table(rep: &mut Report, ctx: &Ctx, d: &Data) {
    let mut t = Table::new(
        &format!(
            "2. Random 16 KiB read latency, QD1, {} rounds x {} reads over a {} all-random image (µs)",
            ctx.plan.latency_rounds,
            ctx.plan.reads,
            human(d.size)
        ),
        &["target", "p50", "p99", "mean", "p50 vs raw volume"],
    );
    let raw = d.before.raw_dbfork;
    let mut lat_row = |name: String, l: &Latency| {
        t.row(vec![
            name,
            us(l.p50_us),
            us(l.p99_us),
            us(l.mean_us),
            ratio(l.p50_us, raw.p50_us),
        ]);
    };
    lat_row("raw file, qemu-nbd -f raw".into(), &d.before.raw_qemu_nbd);
    lat_row("raw volume (dbfork export of the import)".into(), &raw);
    for c in &d.before.unhydrated {
        lat_row(
            format!(
                "dbfork unhydrated clone, {} regions ({} on-demand fetches)",
                human(c.region),
                c.fetches
            ),
            &c.latency,
        );
    }
    let outlasted = |b: &crate::busy::Busy| {
        if b.copy_outlasted_reads {
            format!(" (copy at {:.0}% just after the reads)", b.copied * 100.0)
        } else {
            ", copy ended first".to_string()
        }
    };
    for b in &d.during.dbfork {
        lat_row(
            format!(
                "dbfork clone while hydrating (unlimited), {} regions{}",
                human(b.region),
                outlasted(b)
            ),
            &b.latency,
        );
    }
    for b in &d.during.qemu {
        lat_row(
            format!(
                "QEMU overlay during block-stream, {} clusters{}",
                human(b.region),
                outlasted(b)
            ),
            &b.latency,
        );
    }
    for (rs, _, l, _) in &d.after.dbfork {
        lat_row(format!("dbfork hydrated clone, {} regions", human(*rs)), l);
    }
    for c in &d.before.qemu_cor {
        lat_row(
            format!(
                "QEMU copy-on-read overlay, {} clusters, before stream",
                human(c.region)
            ),
            &c.latency,
        );
    }
    for (rs, _, l) in &d.after.qemu {
        lat_row(
            format!("QEMU overlay, {} clusters, after block-stream", human(*rs)),
            l,
        );
    }
    t.note(
        "Same client for every row (nbd_export::client: one connection, one request in flight); \
         every read is checked against the image. Each read falls in a different 1 MiB region, so \
         on an unhydrated clone or overlay every read is a first touch whatever the region or \
         cluster size. dbfork clones here are made with --no-hydrate; each round uses fresh \
         clones and overlays and new offsets, samples pooled over rounds. 'While hydrating' / \
         'during block-stream' rows: one run each, reads start as the background copy does \
         (dbfork: right after the export's handshake; QEMU: right after `block-stream`) and go \
         to the last quarter of the image (at most one read per MiB there), ahead of both \
         front-to-back copies: a copy under 75% when the reads end means every read was a first \
         touch racing the copy; 'copy ended first' marks a run where the copy finished before \
         the last read. Hydrated rows: \
         the clones of table 3 once independent. The base image is in the \
         page cache (read once before): this compares engines, not the disk.",
    );
    rep.table(&t);
}

fn hydration_table(rep: &mut Report, ctx: &Ctx, d: &Data) {
    let cp = mib_s(d.size, d.after.cp.durable);
    let mut t = Table::new(
        &format!(
            "3. Background hydration of a {} all-random image (median of {})",
            human(d.size),
            ctx.plan.hydration_reps
        ),
        &[
            "engine",
            "done (s)",
            "MiB/s",
            "+ sync (s)",
            "MiB/s durable",
            "vs cp (durable)",
            "fetches",
        ],
    );
    let mut copy_row = |name: String, c: &Copy, fetches: String| {
        t.row(vec![
            name,
            format!("{:.2}", c.done.as_secs_f64()),
            format!("{:.0}", mib_s(d.size, c.done)),
            format!("{:.2}", c.durable.as_secs_f64()),
            format!("{:.0}", mib_s(d.size, c.durable)),
            ratio(mib_s(d.size, c.durable), cp),
            fetches,
        ]);
    };
    copy_row("cp".into(), &d.after.cp, String::new());
    for (rs, c, _, f) in &d.after.dbfork {
        copy_row(
            format!("dbfork clone, {} regions", human(*rs)),
            c,
            f.to_string(),
        );
    }
    for (rs, c, _) in &d.after.qemu {
        copy_row(
            format!("QEMU block-stream, {} clusters", human(*rs)),
            c,
            String::new(),
        );
    }
    t.note(
        "Page cache dropped before each run. dbfork: from spawning `dbfork volume export` (the \
         hydrator runs inside it, unlimited rate) until `status --json` says independent (polled \
         every 20 ms, one CLI process per poll, so up to ~30 ms late); regions are durable when \
         marked. QEMU: from `block-stream` (speed 0) until `query-block-jobs` is empty. cp: until \
         cp exits. '+ sync' adds a sync(2) right after, the common end point (it also flushes \
         other processes' dirty data on this shared machine).",
    );
    rep.table(&t);
}

fn region_table(rep: &mut Report, ctx: &Ctx, d: &Data, def: u64, qdef: u64) {
    let mut t = Table::new(
        "5. Region size (QEMU columns: qcow2 cluster_size set to the same size)",
        &[
            "region",
            "cold random p50 (µs)",
            "p99",
            "mean",
            "cold scan MiB/s",
            "hydration MiB/s",
            "QEMU CoR p50",
            "QEMU cold scan",
            "QEMU stream MiB/s",
            "score",
        ],
    );
    let measured: Vec<Measured> = ctx
        .plan
        .region_sizes
        .iter()
        .map(|&rs| Measured {
            region: rs,
            random_p50_us: d.cold(rs).p50_us,
            scan_mib_s: d.seq(rs),
            hydrate_mib_s: d.hyd_rate(rs),
        })
        .collect();
    let scores = scores(&measured);
    for (m, score) in measured.iter().zip(&scores) {
        let rs = m.region;
        let l = d.cold(rs);
        let mark = match (rs == def, rs == qdef) {
            (true, _) => " (dbfork default)",
            (_, true) => " (qcow2 default)",
            _ => "",
        };
        t.row(vec![
            format!("{}{mark}", human(rs)),
            us(l.p50_us),
            us(l.p99_us),
            us(l.mean_us),
            format!("{:.0}", m.scan_mib_s),
            format!("{:.0}", m.hydrate_mib_s),
            us(d.qemu_cold(rs).p50_us),
            format!("{:.0}", d.qemu_seq(rs)),
            format!("{:.0}", d.qemu_rate(rs)),
            format!("{score:.2}"),
        ]);
    }
    t.note(format!(
        "Cold scan: QD1 sequential 16 KiB reads over the first {} of a fresh --no-hydrate clone \
         (every region fetched on demand once), MiB/s over the time spent in reads.",
        human(d.before.seq_len)
    ));
    t.note(format!("Recommendation: {}", recommend(&measured, &scores)));
    rep.table(&t);
}

/// What the region size trades: small regions make a random first touch cheap,
/// large ones make a cold scan and the background copy cheap.
struct Measured {
    region: u64,
    random_p50_us: f64,
    scan_mib_s: f64,
    hydrate_mib_s: f64,
}

/// Each region size's score: the geometric mean of its three figures relative to
/// the best size for that figure (1.0 = best at everything). Equal weights: a
/// replica's boot is random first touches, its queries' scans are sequential ones,
/// and the background copy decides how soon it stops depending on the source.
fn scores(m: &[Measured]) -> Vec<f64> {
    let best = |f: &dyn Fn(&Measured) -> f64, lower_is_better: bool| {
        let vals = m.iter().map(f).filter(|v| v.is_finite() && *v > 0.0);
        if lower_is_better {
            vals.fold(f64::INFINITY, f64::min)
        } else {
            vals.fold(0.0, f64::max)
        }
    };
    let b_lat = best(&|x| x.random_p50_us, true);
    let b_scan = best(&|x| x.scan_mib_s, false);
    let b_hyd = best(&|x| x.hydrate_mib_s, false);
    m.iter()
        .map(|x| {
            let parts = [
                b_lat / x.random_p50_us,
                x.scan_mib_s / b_scan,
                x.hydrate_mib_s / b_hyd,
            ];
            if parts.iter().all(|p| p.is_finite() && *p > 0.0) {
                parts.iter().product::<f64>().cbrt()
            } else {
                f64::NAN
            }
        })
        .collect()
}

fn recommend(m: &[Measured], scores: &[f64]) -> String {
    let pick = m
        .iter()
        .zip(scores)
        .filter(|(_, s)| s.is_finite())
        .max_by(|a, b| a.1.total_cmp(b.1));
    match pick {
        Some((x, s)) => format!(
            "{} (score {s:.2}: the geometric mean, with equal weights, of cold random-read p50, \
             cold scan throughput and background hydration throughput, each relative to the best \
             region size for that figure). One run on a shared 2-core VM: treat score \
             differences under ~0.1 as noise.",
            human(x.region)
        ),
        None => "none (no complete measurement)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::{recommend, scores, Measured};

    fn m(region: u64, lat: f64, scan: f64, hyd: f64) -> Measured {
        Measured {
            region,
            random_p50_us: lat,
            scan_mib_s: scan,
            hydrate_mib_s: hyd,
        }
    }

    #[test]
    fn best_at_everything_scores_one() {
        let s = scores(&[m(65536, 10.0, 100.0, 500.0), m(1 << 20, 40.0, 50.0, 400.0)]);
        assert!((s[0] - 1.0).abs() < 1e-9);
        assert!(s[1] < 1.0);
    }

    #[test]
    fn a_balanced_middle_wins_over_extremes() {
        let ms = [
            m(64 << 10, 30.0, 100.0, 600.0),
            m(256 << 10, 40.0, 300.0, 800.0),
            m(1 << 20, 300.0, 350.0, 820.0),
        ];
        let s = scores(&ms);
        assert!(recommend(&ms, &s).starts_with("256 KiB"), "{s:?}");
    }

    #[test]
    fn no_data_no_pick() {
        let ms = [m(4096, f64::NAN, f64::NAN, f64::NAN)];
        assert!(recommend(&ms, &scores(&ms)).starts_with("none"));
    }
}
