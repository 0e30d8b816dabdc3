//! clonebench: `dbfork clone` against the DBMS-native replica path (mariadb-backup)
//! on one machine, in one run. See README.md.

mod bench;
mod cleanup;
mod dbfork_cli;
mod machine;
mod native;
mod probe;
mod report;
mod window;

use anyhow::{bail, Context, Result};
use bench::{parse_size, Bench, Plan};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

/// Time to first query of a replica (dbfork clone vs mariadb-backup) at two dataset
/// sizes, the source's throughput while it is cloned, and replica warm-up.
#[derive(Parser, Debug)]
#[command(name = "clonebench", version, about)]
struct Args {
    /// Small dataset and short loads: a smoke run in under two minutes.
    #[arg(long)]
    quick: bool,
    /// Datasets as TABLESxROWS, smallest first (default 4x250000,4x1000000;
    /// --quick: 4x10000).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<String>,
    /// Clones per method and size for the first-query figures (default 2; --quick: 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Extra clones per method and size with the host page cache dropped right
    /// before each (default 1; --quick: 0).
    #[arg(long)]
    cold_runs: Option<usize>,
    /// sysbench tests for the throughput part, comma-separated; "none" skips it
    /// (default oltp_read_only,oltp_write_only; --quick: oltp_read_only).
    #[arg(long, value_delimiter = ',')]
    tests: Vec<String>,
    /// Length of each source load run in seconds (default 45; --quick: 16).
    #[arg(long)]
    load_secs: Option<u32>,
    /// When the clone starts, seconds into the load (default 20; --quick: 6).
    #[arg(long)]
    clone_at: Option<u32>,
    /// Seconds compared before and after the clone starts (default 10; --quick: 5).
    #[arg(long)]
    window: Option<u32>,
    /// Replica warm-up run in seconds; 0 skips it (default 30; --quick: 0).
    #[arg(long)]
    warmup_secs: Option<u32>,
    /// Which dataset (0-based, in --sizes) the throughput and warm-up parts use
    /// (default: the largest).
    #[arg(long)]
    load_size: Option<usize>,
    /// sysbench client threads for the loads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Source volume size (dbfork source create --size).
    #[arg(long, default_value = "4G")]
    volume_size: String,
    /// Region size of the source's volume (dbfork source create --region-size).
    #[arg(long, default_value = "64K")]
    source_region_size: String,
    /// Buffer pool of the source and of every replica.
    #[arg(long, default_value = "256M")]
    buffer_pool: String,
    /// The dbfork binary (default: next to clonebench, else on PATH).
    #[arg(long)]
    dbfork: Option<PathBuf>,
    /// Where the bench's temp dir (dbfork store, native replicas) goes.
    #[arg(long, default_value = "/tmp")]
    base_dir: PathBuf,
    /// Markdown results file (default without --quick: docs/results-clone.md of this
    /// workspace; with --quick: none).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print all results, per-second series included, as JSON on stdout instead of
    /// the report (which still goes to --out).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    hdd: experiments_support::io_model::HddArgs,
}

fn plan_of(a: &Args) -> Result<Plan> {
    let q = a.quick;
    let sizes = if a.sizes.is_empty() {
        if q {
            vec![(4, 10_000)]
        } else {
            vec![(4, 250_000), (4, 1_000_000)]
        }
    } else {
        a.sizes
            .iter()
            .map(|s| parse_size(s))
            .collect::<Result<_>>()?
    };
    let tests: Vec<String> = if a.tests.is_empty() {
        if q {
            vec!["oltp_read_only".into()]
        } else {
            vec!["oltp_read_only".into(), "oltp_write_only".into()]
        }
    } else if a.tests.iter().any(|t| t == "none") {
        Vec::new()
    } else {
        a.tests.clone()
    };
    let load_secs = a.load_secs.unwrap_or(if q { 16 } else { 45 });
    let clone_at = a.clone_at.unwrap_or(if q { 6 } else { 20 });
    let window = a.window.unwrap_or(if q { 5 } else { 10 });
    if window == 0 || clone_at < window || clone_at + window > load_secs {
        bail!(
            "need 0 < --window <= --clone-at and --clone-at + --window <= --load-secs \
             (got window {window}, clone-at {clone_at}, load {load_secs})"
        );
    }
    let load_size = a.load_size.unwrap_or(sizes.len() - 1);
    if load_size >= sizes.len() {
        bail!(
            "--load-size {load_size}: there are only {} datasets",
            sizes.len()
        );
    }
    let reps = a.reps.unwrap_or(if q { 1 } else { 2 });
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    Ok(Plan {
        sizes,
        reps,
        cold_runs: a.cold_runs.unwrap_or(if q { 0 } else { 1 }),
        volume_size: a.volume_size.clone(),
        source_region_size: a.source_region_size.clone(),
        buffer_pool: a.buffer_pool.clone(),
        threads: a.threads.max(1),
        tests,
        load_size,
        load_secs,
        clone_at_secs: clone_at,
        window_secs: window,
        warmup_secs: a.warmup_secs.unwrap_or(if q { 0 } else { 30 }),
        base_dir: a.base_dir.clone(),
        io_model: a.hdd.model(),
        dbfork_exe: cleanup_path(experiments_support::Dbfork::locate(a.dbfork.as_deref())?),
    })
}

fn cleanup_path(p: PathBuf) -> PathBuf {
    std::fs::canonicalize(&p).unwrap_or(p)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let plan = plan_of(&args)?;
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let started = machine::utc_now();
    let commit = machine::workspace_commit();
    let load_before = machine::load_average();
    let t0 = Instant::now();

    let guard = cleanup::StoreGuard::new(plan.dbfork_exe.clone(), &plan.base_dir)
        .with_context(|| format!("temp dir under {}", plan.base_dir.display()))?;
    let results = {
        let mut b = Bench::new(&plan, &guard)?;
        b.run()?
    };
    drop(guard);

    let info = report::RunInfo {
        command,
        machine: machine::Machine::probe(),
        started,
        load_before,
        load_after: machine::load_average(),
        duration_secs: t0.elapsed().as_secs_f64(),
        dbfork_exe: plan.dbfork_exe.display().to_string(),
        commit,
    };
    let md = report::markdown(&plan, &info, &results);
    // --json: stdout is the JSON document alone (the report goes to --out).
    if !args.json {
        println!("{md}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan": plan, "machine": info.machine, "started": info.started,
                "load_before": info.load_before, "load_after": info.load_after,
                "results": results,
            }))?
        );
    }
    let out = args.out.clone().or_else(|| {
        (!args.quick)
            .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/results-clone.md"))
    });
    if let Some(path) = out {
        std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("clonebench: wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["clonebench"];
        if !extra.contains(&"--dbfork") {
            v.extend_from_slice(&["--dbfork", "/bin/true"]);
        }
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn quick_and_full_defaults() {
        let q = plan_of(&args(&["--quick"])).unwrap();
        assert_eq!(q.sizes, vec![(4, 10_000)]);
        assert_eq!(q.tests, vec!["oltp_read_only"]);
        assert_eq!(q.warmup_secs, 0);
        let f = plan_of(&args(&[])).unwrap();
        assert_eq!(f.sizes.len(), 2);
        assert_eq!(f.load_size, 1);
        assert_eq!(f.tests.len(), 2);
    }

    #[test]
    fn bad_plans_are_refused() {
        assert!(plan_of(&args(&["--window", "21"])).is_err());
        assert!(plan_of(&args(&["--clone-at", "40", "--window", "10"])).is_err());
        assert!(plan_of(&args(&["--load-size", "5"])).is_err());
        assert!(plan_of(&args(&["--reps", "0"])).is_err());
        assert!(plan_of(&args(&["--sizes", "4x"])).is_err());
        assert!(plan_of(&args(&["--dbfork", "/nonexistent/dbfork"])).is_err());
        assert!(plan_of(&args(&["--tests", "none"]))
            .unwrap()
            .tests
            .is_empty());
    }
}
