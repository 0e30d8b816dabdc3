//! The summary table: per configuration the paper's three figures (creation time,
//! warm-up time, memory), and the ratios beside the paper's (18x, 7.5x, 0.16x).

use crate::metrics::{fraction, speedup};
use crate::run::{Config, RunResult};
use crate::Storage;
use std::fmt::Write as _;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

pub struct Figures {
    pub first_query_s: Option<f64>,
    pub t90_source_s: Option<f64>,
    pub t90_own_s: Option<f64>,
    /// Replicas that never reached 90% of the source within the run.
    pub never_warm: usize,
    /// Total PSS at the end of the run, and its growth per replica.
    pub end_pss_mib: Option<f64>,
    pub per_replica_mib: Option<f64>,
    pub on_demand_mib: f64,
    pub background_mib: f64,
    pub shared_mib: f64,
}

pub fn figures(r: &RunResult) -> Figures {
    let fq = median(r.replicas.iter().map(|x| x.first_query_s).collect());
    let t90s = median(r.replicas.iter().filter_map(|x| x.t90_source_s).collect());
    let t90o = median(r.replicas.iter().filter_map(|x| x.t90_own_s).collect());
    let mib = 1024.0 * 1024.0;
    // Memory at the end (mean of the last 10 s) against the source alone (before
    // the first fork), divided by the number of replicas.
    let last_t = r.total_pss.last().map(|x| x.0).unwrap_or(0.0);
    let end = crate::metrics::mean_in(&r.total_pss, last_t - 10.0, last_t + 1.0).map(|b| b / mib);
    let first_fork = r.fork_marks.first().copied().unwrap_or(0.0);
    let before = crate::metrics::mean_in(&r.total_pss, first_fork - 10.0, first_fork).map(|b| b / mib);
    let n = r.replicas.len().max(1) as f64;
    Figures {
        first_query_s: fq,
        t90_source_s: t90s,
        t90_own_s: t90o,
        never_warm: r.replicas.iter().filter(|x| x.t90_source_s.is_none()).count(),
        end_pss_mib: end,
        per_replica_mib: end.zip(before).map(|(e, b)| (e - b) / n),
        on_demand_mib: r.replicas.iter().map(|x| x.volume.on_demand_bytes as f64).sum::<f64>() / mib / n,
        background_mib: r.replicas.iter().map(|x| x.volume.background_bytes as f64).sum::<f64>() / mib / n,
        shared_mib: r.replicas.iter().map(|x| x.volume.shared_pages as f64 * 16384.0).sum::<f64>() / mib / n,
    }
}

fn f(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}")).unwrap_or_else(|| "n/a".into())
}

fn ratio(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "n/a".into())
}

/// The markdown section for one storage model.
pub fn section(storage: Storage, runs: &[&RunResult], scenario: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#### Scenario {scenario}, {} storage\n", storage.name());
    let _ = writeln!(
        s,
        "| config | source alone tps | first query s (median) | to 90% of source tps s (median; never) | to 90% of own steady s | total PSS at end MiB | PSS per replica MiB | on-demand MiB/replica | background MiB/replica | shared MiB/replica |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let g = figures(r);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            r.config.name(),
            f(r.source_alone_tps, 0),
            f(g.first_query_s, 1),
            f(g.t90_source_s, 0),
            g.never_warm,
            f(g.t90_own_s, 0),
            f(g.end_pss_mib, 0),
            f(g.per_replica_mib, 0),
            g.on_demand_mib,
            g.background_mib,
            g.shared_mib
        );
    }
    let get = |c: Config| runs.iter().find(|r| r.config == c).map(|r| figures(r));
    let (d, l, ls) = (get(Config::Default), get(Config::Lazy), get(Config::LazyShare));
    let creation = d.as_ref().zip(ls.as_ref()).and_then(|(d, ls)| speedup(d.first_query_s?, ls.first_query_s?));
    let warm = l.as_ref().zip(ls.as_ref()).and_then(|(l, ls)| speedup(l.t90_source_s?, ls.t90_source_s?));
    let mem = d.as_ref().zip(ls.as_ref()).and_then(|(d, ls)| fraction(ls.end_pss_mib?, d.end_pss_mib?));
    let mem_inc = d.as_ref().zip(ls.as_ref()).and_then(|(d, ls)| fraction(ls.per_replica_mib?, d.per_replica_mib?));
    let _ = writeln!(s, "\n| ratio | paper | here |\n|---|---|---|");
    let _ = writeln!(s, "| creation: default / lazy_share, first query | 18x (18 min vs 60 s) | {} |", ratio(creation));
    let _ = writeln!(s, "| warm-up: lazy / lazy_share, to 90% of source | 7.5x (30+ min vs 4 min) | {} |", ratio(warm));
    let _ = writeln!(s, "| memory: lazy_share / default, total at end | 0.16x | {} |", ratio(mem));
    let _ = writeln!(s, "| memory: lazy_share / default, growth per replica | (not stated) | {} |", ratio(mem_inc));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN]), None);
    }
}
