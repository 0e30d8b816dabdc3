//! The results as markdown: ratios first, then the figures they come from.

use crate::bench::{Plan, Results, SizeResult, ThroughputResult};
use crate::machine::Machine;
use std::fmt::Write;

/// Everything about the run that is not a measurement.
pub struct RunInfo {
    pub command: String,
    pub machine: Machine,
    pub started: String,
    pub load_before: String,
    pub load_after: String,
    pub duration_secs: f64,
    pub dbfork_exe: String,
    pub commit: String,
}

pub fn median(v: &[u64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    })
}

/// Time to first query, outside probe where it answered, else the tool's own.
fn dbfork_ttfq(s: &SizeResult, cold: bool) -> Vec<u64> {
    s.dbfork
        .iter()
        .filter(|r| r.cold_cache == cold)
        .map(|r| r.probe_ms.unwrap_or(r.clone.first_query_ms))
        .collect()
}

fn native_ttfq(s: &SizeResult, cold: bool) -> Vec<u64> {
    s.native
        .iter()
        .filter(|r| r.cold_cache == cold)
        .map(|r| r.probe_ms.unwrap_or(r.until_first_query_ms))
        .collect()
}

fn label(tables: u32, rows: u64) -> String {
    let r = if rows >= 1_000_000 && rows % 1_000_000 == 0 {
        format!("{}M", rows / 1_000_000)
    } else if rows >= 1000 && rows % 1000 == 0 {
        format!("{}k", rows / 1000)
    } else {
        rows.to_string()
    };
    format!("{tables} x {r} rows")
}

fn mb(b: u64) -> String {
    format!("{:.0} MB", b as f64 / 1e6)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

fn tps(w: &Option<crate::window::WindowStats>) -> Option<f64> {
    w.as_ref().map(|w| w.mean_tps)
}

fn f0(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}"))
}

fn list(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

pub fn markdown(plan: &Plan, info: &RunInfo, res: &Results) -> String {
    let mut o = String::new();
    let m = &info.machine;
    let _ = writeln!(o, "## dbfork clone vs the DBMS-native path (clonebench)\n");
    let _ = writeln!(o, "- command: `{}`", info.command);
    let _ = writeln!(
        o,
        "- built with: `CARGO_TARGET_DIR=target-clonebench cargo build --release -p dbfork -p clonebench` (from /work/main)"
    );
    let _ = writeln!(
        o,
        "- dbfork binary: `{}`; workspace at the run: {}",
        info.dbfork_exe, info.commit
    );
    let _ = writeln!(
        o,
        "- machine: {}-core VM, {} GiB RAM, {}, kernel {}; {}; {}",
        m.cores, m.mem_gib, m.os, m.kernel, m.mariadb, m.sysbench
    );
    let _ = writeln!(
        o,
        "- date: {}; load average before: {}, after: {}; run took {:.0} s",
        info.started, info.load_before, info.load_after, info.duration_secs
    );
    let sizes: Vec<String> = plan.sizes.iter().map(|&(t, r)| label(t, r)).collect();
    let _ = writeln!(
        o,
        "- setup: one `dbfork source create` ({} volume with {} regions, {} buffer pool); datasets {} \
         (sysbench prepare, smallest first, the previous one dropped, binlogs purged after \
         the prepare); {} run(s) per method and size with a warm page cache and {} with the \
         host page cache dropped (sync; drop_caches=3) right before the clone; source dirty \
         pages flushed before each clone; sysbench {} thread(s)",
        plan.volume_size,
        plan.source_region_size,
        plan.buffer_pool,
        sizes.join(", "),
        plan.reps,
        plan.cold_runs,
        plan.threads
    );
    if let Some(m) = &plan.io_model {
        let _ = writeln!(o, "- slow disk: {}", m.describe());
    }
    let _ = writeln!(
        o,
        "- time to first query = from the clone command starting to the new server answering \
         `SELECT k FROM sbtest.sbtest1 WHERE id = 1`, seen by an outside probe polling its \
         socket every 20 ms (same probe for both paths)\n"
    );

    // Ratios first.
    let _ = writeln!(o, "### Ratios\n");
    let _ = writeln!(o, "| ratio | value | meaning |\n|---|---|---|");
    for cold in [false, true] {
        let cache = cache_label(cold);
        for s in &res.sizes {
            let (n, d) = (native_ttfq(s, cold), dbfork_ttfq(s, cold));
            if n.is_empty() && d.is_empty() {
                continue;
            }
            let _ = writeln!(
                o,
                "| time to first query, native / dbfork, {} ({}), {cache} | {} | > 1: dbfork faster |",
                label(s.tables, s.rows),
                mb(s.data_bytes),
                ratio(median(&n), median(&d))
            );
        }
        if let (Some(first), Some(last)) = (res.sizes.first(), res.sizes.last()) {
            if res.sizes.len() > 1 && !dbfork_ttfq(last, cold).is_empty() {
                let growth = format!(
                    "{} / {}",
                    label(last.tables, last.rows),
                    label(first.tables, first.rows)
                );
                let _ = writeln!(
                    o,
                    "| dbfork time to first query, {growth}, {cache} | {} | flat in size: ~1 |",
                    ratio(
                        median(&dbfork_ttfq(last, cold)),
                        median(&dbfork_ttfq(first, cold))
                    )
                );
                let _ = writeln!(
                    o,
                    "| native time to first query, {growth}, {cache} | {} | grows with the data (data {}) |",
                    ratio(
                        median(&native_ttfq(last, cold)),
                        median(&native_ttfq(first, cold))
                    ),
                    ratio(Some(last.data_bytes as f64), Some(first.data_bytes as f64))
                );
            }
        }
    }
    for t in &res.throughput {
        let _ = writeln!(
            o,
            "| source tps, {} clone window / before, {} | {} | ~1: the clone costs the source nothing |",
            t.method,
            t.test,
            ratio(tps(&t.during), tps(&t.before))
        );
    }
    for t in &res.throughput {
        let _ = writeln!(
            o,
            "| source tps, while the {} clone command ran / before, {} | {} | the dip while the clone is made |",
            t.method,
            t.test,
            ratio(tps(&t.during_command), tps(&t.before))
        );
    }
    for t in &res.throughput {
        let _ = writeln!(
            o,
            "| source tps, after the window / before, {} clone, {} | {} | does the effect last (replica running, hydration done or not) |",
            t.method,
            t.test,
            ratio(tps(&t.after), tps(&t.before))
        );
    }
    let d = res.warmup.iter().find(|w| w.method == "dbfork");
    let n = res.warmup.iter().find(|w| w.method == "native");
    if let (Some(d), Some(n)) = (d, n) {
        let total = |w: &crate::bench::WarmupResult| {
            w.secs_to_90
                .map(|s| w.first_query_ms as f64 + s as f64 * 1000.0)
        };
        let _ = writeln!(
            o,
            "| clone start to 90% of source read tps, native / dbfork | {} | > 1: dbfork warm sooner |",
            ratio(total(n), total(d))
        );
    }

    // Part 1.
    let _ = writeln!(o, "\n### 1. Time to first query (ms)\n");
    let _ = writeln!(
        o,
        "| dataset | data | datadir | cache | method | first query (median) | runs | the tool's own figure | phases |\n|---|---|---|---|---|---|---|---|---|"
    );
    for s in &res.sizes {
        for cold in [false, true] {
            size_rows(&mut o, s, cold);
        }
    }
    let _ = writeln!(
        o,
        "\n\"the tool's own figure\": dbfork's `clone.first_query_ms` (it starts after the \
         hot-page dump that precedes the consistent point, so it is lower than the probe's); \
         for native, backup + prepare + copy-back + server start. Sysbench prepare took {}.",
        res.sizes
            .iter()
            .map(|s| format!("{:.0} s for {}", s.prepare_secs, label(s.tables, s.rows)))
            .collect::<Vec<_>>()
            .join(", ")
    );

    if !res.throughput.is_empty() {
        let _ = writeln!(
            o,
            "\n### 2. Source throughput around a clone (sysbench on the source, {} s run, clone started at {} s, windows of {} s)\n",
            plan.load_secs, plan.clone_at_secs, plan.window_secs
        );
        let _ = writeln!(
            o,
            "| test | dataset | clone | tps before | tps in window (min 1 s) | tps while the clone command ran | tps after the window | clone ran (s since load start) | commits held | replica hydrated at window end |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for t in &res.throughput {
            throughput_row(&mut o, t);
        }
        let _ = writeln!(
            o,
            "\nThe window after the clone starts includes the dbfork replica's start, its \
             background hydration and replication; for native it is mariadb-backup \
             reading the source's datadir. Per-second series are in the JSON output (`--json`)."
        );
    }

    if !res.warmup.is_empty() {
        let _ = writeln!(
            o,
            "\n### 3. Replica warm-up: oltp_read_only on the fresh replica alone, {} s, right after the clone\n",
            plan.warmup_secs
        );
        let _ = writeln!(
            o,
            "| replica | source alone (tps) | first query after (ms) | seconds of load to 90% | clone start to 90% (s) | replica tps, first 5 s |\n|---|---|---|---|---|---|"
        );
        for w in &res.warmup {
            let first: Vec<String> = w
                .tps_series
                .iter()
                .take(5)
                .map(|t| format!("{t:.0}"))
                .collect();
            let _ = writeln!(
                o,
                "| {} | {:.0} | {} | {} | {} | {} |",
                w.method,
                w.source_tps,
                w.first_query_ms,
                w.secs_to_90.map_or("not reached".into(), |s| s.to_string()),
                w.secs_to_90.map_or("n/a".into(), |s| format!(
                    "{:.1}",
                    w.first_query_ms as f64 / 1000.0 + s as f64
                )),
                first.join(", ")
            );
        }
        for w in &res.warmup {
            if let Some(c) = &w.sharing {
                let _ = writeln!(
                    o,
                    "\n{} replica's sharing after the load: {} pages shared, {} lookups missed{}; \
                     the source so far: {} frames revalidated, {} copied, {} moved onto their copy, \
                     {} dropped for a full pool.",
                    w.method,
                    c.replica_shared,
                    c.replica_lookup_misses,
                    c.replica_sharing_off
                        .as_ref()
                        .map_or(String::new(), |r| format!(", sharing off: {r}")),
                    c.source_frames_revalidated,
                    c.source_scan_frames_pooled,
                    c.source_frames_moved,
                    c.source_pool_full_drops
                );
            }
        }
    }
    o
}

fn cache_label(cold: bool) -> &'static str {
    if cold {
        "page cache dropped"
    } else {
        "warm page cache"
    }
}

fn size_rows(o: &mut String, s: &SizeResult, cold: bool) {
    let runs: Vec<_> = s.dbfork.iter().filter(|r| r.cold_cache == cold).collect();
    let nruns: Vec<_> = s.native.iter().filter(|r| r.cold_cache == cold).collect();
    if runs.is_empty() && nruns.is_empty() {
        return;
    }
    let own: Vec<u64> = runs.iter().map(|r| r.clone.first_query_ms).collect();
    let phases = runs
        .first()
        .map(|r| {
            let c = &r.clone;
            format!(
                "flush {}, consistent point {} (hold {}), share scan {}, clone+attach {}, prefetch {} ({} hot pages), start {}, replication {}; command {}",
                c.flush_ms,
                c.consistent_point_ms,
                c.hold_ms,
                c.share_scan_ms,
                c.clone_and_attach_ms,
                c.prefetch_ms,
                c.hot_pages,
                c.start_ms,
                c.replication_ms,
                c.command_ms
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "| {} | {} | {} | {} | dbfork clone | {} | {} | {} | {} |",
        label(s.tables, s.rows),
        mb(s.data_bytes),
        mb(s.datadir_bytes),
        cache_label(cold),
        f0(median(&dbfork_ttfq(s, cold))),
        list(&dbfork_ttfq(s, cold)),
        list(&own),
        phases
    );
    let own: Vec<u64> = nruns.iter().map(|r| r.until_first_query_ms).collect();
    let phases = nruns
        .first()
        .map(|r| {
            let t = &r.timings;
            format!(
                "backup {}, prepare {}, copy-back {}, start {}, replication {}; total {}",
                t.backup_ms, t.prepare_ms, t.copy_back_ms, t.start_ms, t.configure_ms, t.total_ms
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "| | | | | native (mariadb-backup) | {} | {} | {} | {} |",
        f0(median(&native_ttfq(s, cold))),
        list(&native_ttfq(s, cold)),
        list(&own),
        phases
    );
}

fn throughput_row(o: &mut String, t: &ThroughputResult) {
    let during = t.during.as_ref().map_or("n/a".into(), |w| {
        format!("{:.0} (min {:.0})", w.mean_tps, w.min_tps)
    });
    let _ = writeln!(
        o,
        "| {} | {} | {} | {} | {} | {} | {} | {:.1} - {:.1} | {} | {} |",
        t.test,
        label(t.tables, t.rows),
        t.method,
        f0(tps(&t.before)),
        during,
        f0(tps(&t.during_command)),
        f0(tps(&t.after)),
        t.clone_start_s,
        t.clone_end_s,
        t.hold_ms.map_or("n/a".into(), |h| format!("{h} ms")),
        t.hydrated_percent_at_window_end
            .map_or("n/a".into(), |h| format!("{h:.1}%"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3, 1, 2]), Some(2.0));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn labels_and_ratios() {
        assert_eq!(label(4, 250_000), "4 x 250k rows");
        assert_eq!(label(4, 1_000_000), "4 x 1M rows");
        assert_eq!(label(2, 1234), "2 x 1234 rows");
        assert_eq!(ratio(Some(10.0), Some(4.0)), "2.50x");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "n/a");
        assert_eq!(ratio(None, Some(1.0)), "n/a");
    }
}
