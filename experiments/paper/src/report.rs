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
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
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
    pub copied_mib: f64,
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
    let before =
        crate::metrics::mean_in(&r.total_pss, first_fork - 10.0, first_fork).map(|b| b / mib);
    let n = r.replicas.len().max(1) as f64;
    // Mean over the replicas of one volume figure, in MiB.
    let mean_mib = |bytes: fn(&crate::sampler::VolumeFigures) -> f64| {
        r.replicas.iter().map(|x| bytes(&x.volume)).sum::<f64>() / mib / n
    };
    Figures {
        first_query_s: fq,
        t90_source_s: t90s,
        t90_own_s: t90o,
        never_warm: r
            .replicas
            .iter()
            .filter(|x| x.t90_source_s.is_none())
            .count(),
        end_pss_mib: end,
        per_replica_mib: end.zip(before).map(|(e, b)| (e - b) / n),
        on_demand_mib: mean_mib(|v| v.on_demand_bytes as f64),
        background_mib: mean_mib(|v| v.background_bytes as f64),
        copied_mib: mean_mib(|v| v.copied_bytes as f64),
        shared_mib: mean_mib(|v| v.shared_pages as f64 * 16384.0),
    }
}

fn f(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "n/a".into())
}

fn ratio(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}x"))
        .unwrap_or_else(|| "n/a".into())
}

/// The markdown section for one storage model.
pub fn section(storage: Storage, runs: &[&RunResult], scenario: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#### Scenario {scenario}, {} storage\n", storage.name());
    let _ = writeln!(
        s,
        "| config | source alone tps | first query s (median) | to 90% of source tps s (median; never) | to 90% of own steady s | total PSS at end MiB | PSS per replica MiB | on-demand MiB/replica | background MiB/replica | copied MiB/replica | shared MiB/replica |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let g = figures(r);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
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
            g.copied_mib,
            g.shared_mib
        );
    }
    let get = |c: Config| runs.iter().find(|r| r.config == c).map(|r| figures(r));
    let (d, l, ls) = (
        get(Config::Default),
        get(Config::Lazy),
        get(Config::LazyShare),
    );
    let creation = d
        .as_ref()
        .zip(ls.as_ref())
        .and_then(|(d, ls)| speedup(d.first_query_s?, ls.first_query_s?));
    let warm = l
        .as_ref()
        .zip(ls.as_ref())
        .and_then(|(l, ls)| speedup(l.t90_source_s?, ls.t90_source_s?));
    let vs_share = |c: Config| {
        get(c)
            .zip(ls.as_ref())
            .and_then(|(x, ls)| speedup(x.t90_own_s?, ls.t90_own_s?))
    };
    let mem = d
        .as_ref()
        .zip(ls.as_ref())
        .and_then(|(d, ls)| fraction(ls.end_pss_mib?, d.end_pss_mib?));
    let mem_inc = d
        .as_ref()
        .zip(ls.as_ref())
        .and_then(|(d, ls)| fraction(ls.per_replica_mib?, d.per_replica_mib?));
    let _ = writeln!(s, "\n| ratio | paper | here |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| creation: default / lazy_share, first query | 18x (18 min vs 60 s) | {} |",
        ratio(creation)
    );
    let _ = writeln!(
        s,
        "| warm-up: lazy / lazy_share, to 90% of source | 7.5x (30+ min vs 4 min) | {} |",
        ratio(warm)
    );
    let _ = writeln!(
        s,
        "| warm-up: cold anchor / lazy_share, to 90% of own steady | (anchor) | {} |",
        ratio(vs_share(Config::Cold))
    );
    let _ = writeln!(
        s,
        "| warm-up: dump anchor / lazy_share, to 90% of own steady | (anchor) | {} |",
        ratio(vs_share(Config::Dump))
    );
    let _ = writeln!(
        s,
        "| memory: lazy_share / default, total at end | 0.16x | {} |",
        ratio(mem)
    );
    let _ = writeln!(
        s,
        "| memory: lazy_share / default, growth per replica | (not stated) | {} |",
        ratio(mem_inc)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::run::ReplicaResult;
    use crate::sampler::VolumeFigures;

    fn run(config: Config, first_query: f64, t90: Option<f64>, pss_end_mib: f64) -> RunResult {
        let mib = 1024.0 * 1024.0;
        RunResult {
            scenario: crate::Scenario::R,
            storage: Storage::Plain,
            config,
            first_replica_tps: vec![],
            source_alone_tps: Some(1000.0),
            replicas: vec![ReplicaResult {
                storage: Storage::Plain,
                config,
                name: "r1".into(),
                fork_at_s: 60.0,
                first_query_s: first_query,
                t90_source_s: t90,
                t90_own_s: t90,
                steady_tps: Some(500.0),
                volume: VolumeFigures::default(),
            }],
            total_tps: vec![],
            // 100 MiB before the fork at 60 s, pss_end_mib from 61 s on.
            total_pss: (0..120)
                .map(|t| (t as f64, if t < 61 { 100.0 } else { pss_end_mib } * mib))
                .collect(),
            fork_marks: vec![60.0],
        }
    }

    #[test]
    fn ratios_are_computed_against_the_right_configs() {
        let d = run(Config::Default, 36.0, Some(40.0), 300.0);
        let l = run(Config::Lazy, 3.0, Some(30.0), 290.0);
        let ls = run(Config::LazyShare, 2.0, Some(5.0), 150.0);
        let s = section(Storage::Plain, &[&d, &l, &ls], "R");
        assert!(
            s.contains(
                "| creation: default / lazy_share, first query | 18x (18 min vs 60 s) | 18.00x |"
            ),
            "{s}"
        );
        assert!(s.contains("7.5x (30+ min vs 4 min) | 6.00x |"), "{s}");
        assert!(s.contains("| 0.16x | 0.50x |"), "{s}");
        // Growth per replica: 200 MiB native vs 50 MiB shared.
        assert!(s.contains("| (not stated) | 0.25x |"), "{s}");
        // Anchors against lazy_share, on each one's own steady tps.
        let cold = run(Config::Cold, 9.0, Some(20.0), 300.0);
        let s = section(Storage::Throttled, &[&d, &ls, &cold], "R");
        assert!(
            s.contains(
                "| warm-up: cold anchor / lazy_share, to 90% of own steady | (anchor) | 4.00x |"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "| warm-up: dump anchor / lazy_share, to 90% of own steady | (anchor) | n/a |"
            ),
            "{s}"
        );
        let g = figures(&ls);
        assert_eq!(g.per_replica_mib, Some(50.0));
    }

    #[test]
    fn missing_configs_give_na_not_a_panic() {
        let ls = run(Config::LazyShare, 2.0, None, 150.0);
        let s = section(Storage::Plain, &[&ls], "W");
        assert!(s.contains("| 18x (18 min vs 60 s) | n/a |"), "{s}");
        assert!(s.contains("| n/a (1) |"), "{s}");
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN]), None);
    }
}
