//! PNG figures like the paper's 3 and 4, drawn by gnuplot (Debian's gnuplot-nox)
//! from data files the harness writes: total throughput over time per configuration
//! with replica start marks, total memory (PSS) over time, and the first replica's
//! warm-up per configuration (the warm-up anchors beside the four configurations).

use crate::run::RunResult;
use crate::{Scenario, Storage};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `fig3-<storage>.png` (tps) and `fig4-<storage>.png` (memory) into `dir`.
pub fn figures(
    dir: &Path,
    storage: Storage,
    runs: &[&RunResult],
    scn: Scenario,
) -> Result<Vec<PathBuf>> {
    if runs.is_empty() {
        return Ok(vec![]);
    }
    let mut tps_plots = Vec::new();
    let mut mem_plots = Vec::new();
    let mut warm_plots = Vec::new();
    let mut marks = String::new();
    for (i, r) in runs.iter().enumerate() {
        let cfg = r.config.name();
        let tps = dir.join(format!(
            "agg-{}-{}-{cfg}-tps.dat",
            scn.name(),
            storage.name()
        ));
        let mem = dir.join(format!(
            "agg-{}-{}-{cfg}-mem.dat",
            scn.name(),
            storage.name()
        ));
        std::fs::write(&tps, dat(&r.total_tps, 1.0))?;
        std::fs::write(&mem, dat(&r.total_pss, 1.0 / (1024.0 * 1024.0)))?;
        let warm = dir.join(format!(
            "warm-{}-{}-{cfg}-r1.dat",
            scn.name(),
            storage.name()
        ));
        std::fs::write(&warm, dat(&r.first_replica_tps, 1.0))?;
        let lt = i + 1;
        warm_plots.push(format!(
            "'{}' using 1:2 with lines lt {lt} lw 2 title '{cfg}'",
            warm.display()
        ));
        tps_plots.push(format!(
            "'{}' using 1:2 with lines lt {lt} lw 2 title '{cfg}'",
            tps.display()
        ));
        mem_plots.push(format!(
            "'{}' using 1:2 with lines lt {lt} lw 2 title '{cfg}'",
            mem.display()
        ));
        if i == 0 {
            for m in &r.fork_marks {
                let _ = writeln!(
                    marks,
                    "set arrow from {m:.0}, graph 0 to {m:.0}, graph 1 nohead dt 2 lc rgb 'gray'"
                );
            }
        }
    }
    let label = storage.name();
    let scenario = scn.name();
    // The paper's numbering: 3/4 read-intensive, 5/6 write-intensive.
    let (a, b) = match scn {
        Scenario::R => (3, 4),
        Scenario::W => (5, 6),
    };
    let f3 = dir.join(format!("fig{a}-{scenario}-{label}.png"));
    let f4 = dir.join(format!("fig{b}-{scenario}-{label}.png"));
    let script = format!(
        "set terminal pngcairo size 1000,560 font 'DejaVu Sans,11' noenhanced\n\
         set grid\nset key top left\nset xlabel 'time [s] (dashed: replica forks)'\n{marks}\
         set output '{}'\nset title 'Scenario {scenario}: total throughput of all instances ({label} storage)'\n\
         set ylabel 'transactions / s (sum)'\nplot {}\n\
         set output '{}'\nset title 'Scenario {scenario}: total memory of all mariadbd (PSS, {label} storage)'\n\
         set ylabel 'MiB (sum of PSS)'\nplot {}\n",
        f3.display(),
        tps_plots.join(", "),
        f4.display(),
        mem_plots.join(", "),
    );
    // Warm-up: the first replica of each configuration (anchors included) on a clock
    // starting at its fork, so their curves overlay.
    let fw = dir.join(format!("warmup-{scenario}-{label}.png"));
    let script = format!(
        "{script}unset arrow\nset xlabel 'seconds since the fork'\n\
         set output '{}'\nset title 'Scenario {scenario}: warm-up of the first replica ({label} storage)'\n\
         set ylabel 'replica transactions / s'\nplot {}\n",
        fw.display(),
        warm_plots.join(", "),
    );
    let sp = dir.join(format!("figures-{scenario}-{label}.gp"));
    std::fs::write(&sp, &script)?;
    let st = Command::new("gnuplot")
        .arg(&sp)
        .status()
        .context("running gnuplot (apt-get install -y gnuplot-nox)")?;
    if !st.success() {
        bail!("gnuplot {}: {st}", sp.display());
    }
    Ok(vec![f3, f4, fw])
}

/// Per-configuration figure: each instance's tps over time.
pub fn per_instance(
    dir: &Path,
    run: &RunResult,
    tps_csv: &Path,
    scenario: &str,
) -> Result<PathBuf> {
    let (s, c) = (run.storage.name(), run.config.name());
    let out = dir.join(format!("tps-{scenario}-{s}-{c}.png"));
    let mut plots = Vec::new();
    let names =
        std::iter::once("src".to_string()).chain(run.replicas.iter().map(|r| r.name.clone()));
    for n in names {
        plots.push(format!(
            "'< grep \"^{scenario},{s},{c},[^,]*,{n},\" {}' using 4:6 with lines lw 1.5 title '{n}'",
            tps_csv.display()
        ));
    }
    let script = format!(
        "set terminal pngcairo size 1000,500 font 'DejaVu Sans,11' noenhanced\nset datafile separator ','\n\
         set grid\nset key top left\nset xlabel 'time [s]'\nset ylabel 'transactions / s'\n\
         set output '{}'\nset title 'Scenario {scenario}, {c}: per-instance throughput ({s} storage)'\nplot {}\n",
        out.display(),
        plots.join(", ")
    );
    let sp = dir.join(format!("tps-{scenario}-{s}-{c}.gp"));
    std::fs::write(&sp, script)?;
    let st = Command::new("gnuplot")
        .arg(&sp)
        .status()
        .context("running gnuplot")?;
    if !st.success() {
        bail!("gnuplot {}: {st}", sp.display());
    }
    Ok(out)
}

fn dat(series: &[(f64, f64)], scale: f64) -> String {
    let mut s = String::new();
    for (t, y) in series {
        let _ = writeln!(s, "{t:.0} {:.2}", y * scale);
    }
    s
}
