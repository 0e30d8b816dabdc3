//! paperrun: the dbfork paper's evaluation (seeds/004 section 5, figures 3-6) at
//! this machine's scale. See README.md.

mod csv;
mod dbfork;
mod metrics;
mod parse;
mod plot;
mod report;
mod run;
mod sampler;
mod throttle;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use run::{Config, RunResult};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// This machine: 4 x 100k-row tables, 256M buffer pools, 60 s interval, 3 replicas.
    Small,
    /// The paper's: ~17 GB data, 15G buffer pools, 3500 s interval, 8 replicas
    /// (needs a 256 GB host; see README).
    Paper,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Read-intensive: source under oltp_read_only.
    R,
    /// Write-intensive: source under a TPC-C-like load (tpcc/tpcc.lua), replicas
    /// under reads of the TPC-C tables (tpcc/tpcc_read.lua).
    W,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::R => "R",
            Scenario::W => "W",
        }
    }
}

/// Cardinalities of the TPC-C-like dataset (tpcc.lua's options).
#[derive(Clone, Debug)]
pub struct Tpcc {
    pub warehouses: u32,
    pub items: u32,
    pub customers: u32,
    pub orders: u32,
}

impl Tpcc {
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--warehouses={}", self.warehouses),
            format!("--items={}", self.items),
            format!("--customers={}", self.customers),
            format!("--orders={}", self.orders),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageArg {
    Plain,
    Throttled,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Plain,
    Throttled,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::Plain => "plain",
            Storage::Throttled => "throttled",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Reproduce the dbfork paper's figures 3-6 at this machine's scale")]
struct Args {
    #[arg(long, value_enum, default_value = "small")]
    scale: Scale,
    #[arg(long, value_enum, default_value = "r")]
    scenario: Scenario,
    /// Configurations, run one after another, each with a fresh source.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "default,lazy,share,lazy_share"
    )]
    configs: Vec<Config>,
    /// plain: the volume as is; throttled: replicas' reads limited to --read-iops.
    #[arg(long, value_enum, default_value = "plain")]
    storage: StorageArg,
    /// Seconds between replica forks (the paper: 3500).
    #[arg(long)]
    interval: Option<u64>,
    /// Replicas forked per configuration (the paper: 8).
    #[arg(long)]
    replicas: Option<u32>,
    /// sysbench tables and rows per table of the dataset.
    #[arg(long)]
    tables: Option<u32>,
    #[arg(long)]
    rows: Option<u64>,
    /// Warehouses of the TPC-C-like dataset (scenario W).
    #[arg(long)]
    warehouses: Option<u32>,
    /// Random read IOPS of the throttled storage (a 7200 rpm disk does ~100-200).
    #[arg(long, default_value_t = 150)]
    read_iops: u32,
    /// Where the stores and native replicas live while running.
    #[arg(long, default_value = "/tmp")]
    base_dir: PathBuf,
    /// Output directory (default: experiments/out/<scenario>-<scale>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Markdown file the summary is appended to.
    #[arg(long)]
    results: Option<PathBuf>,
}

/// Everything a run needs, resolved from the scale and the overrides.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: Scenario,
    pub tpcc: Tpcc,
    pub dbfork: PathBuf,
    pub base_dir: PathBuf,
    pub tables: u32,
    pub rows: u64,
    pub threads: u32,
    pub buffer_pool: String,
    pub volume_size: String,
    pub interval: u64,
    pub replicas: u32,
    pub read_iops: u32,
}

static STOP: AtomicBool = AtomicBool::new(false);

pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
    // main loop sees the flag and unwinds so every guard cleans up.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let (tables, rows, pool, vol, interval, replicas) = match a.scale {
        Scale::Small => (4, 100_000, "256M", "4G", 60, 3),
        Scale::Paper => (68, 1_000_000, "15G", "40G", 3500, 8),
    };
    // Small: a reduced TPC-C (items, customers and orders per district a tenth of
    // the spec's); paper: the spec's cardinalities, ~100 MB per warehouse.
    let tpcc = match a.scale {
        Scale::Small => Tpcc {
            warehouses: a.warehouses.unwrap_or(2),
            items: 10_000,
            customers: 300,
            orders: 300,
        },
        Scale::Paper => Tpcc {
            warehouses: a.warehouses.unwrap_or(170),
            items: 100_000,
            customers: 3000,
            orders: 3000,
        },
    };
    let plan = Plan {
        scenario: a.scenario,
        tpcc,
        dbfork: dbfork::Dbfork::locate()?,
        base_dir: a.base_dir.clone(),
        tables: a.tables.unwrap_or(tables),
        rows: a.rows.unwrap_or(rows),
        threads: 2,
        buffer_pool: pool.into(),
        volume_size: vol.into(),
        interval: a.interval.unwrap_or(interval),
        replicas: a.replicas.unwrap_or(replicas),
        read_iops: a.read_iops,
    };
    let storages = match a.storage {
        StorageArg::Plain => vec![Storage::Plain],
        StorageArg::Throttled => vec![Storage::Throttled],
        StorageArg::Both => vec![Storage::Plain, Storage::Throttled],
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = repo.canonicalize().unwrap_or(repo);
    let stamp = utc_stamp();
    let scale = format!("{:?}", a.scale).to_lowercase();
    let out = a.out.clone().unwrap_or_else(|| {
        repo.join("experiments/out")
            .join(format!("{}-{scale}-{stamp}", a.scenario.name()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!("paperrun: {plan:?}\n  output in {}", out.display());

    let total = storages.len() * a.configs.len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] run {pos}/{len} {wide_msg}")
            .expect("static template"),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let started = Instant::now();
    let mut results: Vec<RunResult> = Vec::new();
    let mut failures = Vec::new();
    for &storage in &storages {
        for &config in &a.configs {
            if stopped() {
                break;
            }
            match run::run_one(&plan, storage, config, &out, &bar) {
                Ok(r) => results.push(r),
                Err(e) => {
                    bar.println(format!(
                        "{}/{}: FAILED: {e:#}",
                        storage.name(),
                        config.name()
                    ));
                    failures.push(format!("{}/{}: {e:#}", storage.name(), config.name()));
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_with_message("done");
    let wall = started.elapsed();

    write_replicas_csv(&out, &results)?;
    let mut md = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    md.push_str(&format!(
        "\n### paperrun, scenario {}, scale {scale}, {stamp}\n\n\
         Command: `experiments/run {}` (wall {:.1} min). Machine: 2-core VM, Debian 12, {}.\n\
         Dataset {}, buffer pool {} per instance, sysbench {} threads per instance, \
         a replica every {} s, {} replicas. Throttled = replica reads limited to {} IOPS (cgroup v1 blkio on its loop device). \
         Output: `{}`.\n\n",
        a.scenario.name(),
        cmd[1..].join(" "),
        wall.as_secs_f64() / 60.0,
        mem_total(),
        dataset(&plan),
        plan.buffer_pool,
        plan.threads,
        plan.interval,
        plan.replicas,
        plan.read_iops,
        out.strip_prefix(&repo).unwrap_or(&out).display(),
    ));
    for &storage in &storages {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.storage == storage).collect();
        if runs.is_empty() {
            continue;
        }
        md.push_str(&report::section(storage, &runs, a.scenario.name()));
        md.push('\n');
        match plot::figures(&out, storage, &runs, a.scenario) {
            Ok(files) => {
                for f in files {
                    md.push_str(&format!(
                        "Figure: `{}`\n",
                        f.strip_prefix(&repo).unwrap_or(&f).display()
                    ));
                }
            }
            Err(e) => md.push_str(&format!("(figures failed: {e:#})\n")),
        }
        for r in &runs {
            if let Err(e) = plot::per_instance(&out, r, &out.join("tps.csv"), a.scenario.name()) {
                md.push_str(&format!("(per-instance figure failed: {e:#})\n"));
            }
        }
        md.push('\n');
    }
    for f in &failures {
        md.push_str(&format!("FAILED: {f}\n"));
    }
    std::fs::write(out.join("summary.md"), &md)?;
    let results_md = a
        .results
        .clone()
        .unwrap_or_else(|| repo.join("docs/results-paper.md"));
    append_results(&results_md, &md)?;
    println!("{md}");
    eprintln!("summary appended to {}", results_md.display());
    if !failures.is_empty() {
        bail!("{} of {total} runs failed", failures.len());
    }
    Ok(())
}

fn write_replicas_csv(out: &std::path::Path, results: &[RunResult]) -> Result<()> {
    let mut s = String::from(
        "storage,config,replica,fork_at_s,first_query_s,t90_source_s,t90_own_s,steady_tps,on_demand_bytes,background_bytes,hydrated_bytes,size,shared_pages\n",
    );
    let o = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_default();
    for r in results {
        for x in &r.replicas {
            s.push_str(&csv::row(&[
                x.storage.name().into(),
                x.config.name().into(),
                x.name.clone(),
                format!("{:.1}", x.fork_at_s),
                format!("{:.2}", x.first_query_s),
                o(x.t90_source_s),
                o(x.t90_own_s),
                o(x.steady_tps),
                x.volume.on_demand_bytes.to_string(),
                x.volume.background_bytes.to_string(),
                x.volume.hydrated_bytes.to_string(),
                x.volume.size.to_string(),
                x.volume.shared_pages.to_string(),
            ]));
        }
    }
    std::fs::write(out.join("replicas.csv"), s)?;
    Ok(())
}

fn append_results(path: &std::path::Path, md: &str) -> Result<()> {
    use std::io::Write;
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if new {
        f.write_all(
            b"# Results: the paper's evaluation at this machine's scale (experiments/paper)\n\n\
              Generated by `experiments/run`; each run appends a section. See experiments/paper/README.md\n\
              for what each column means and how it differs from the paper.\n",
        )?;
    }
    f.write_all(md.as_bytes())?;
    Ok(())
}

fn dataset(plan: &Plan) -> String {
    match plan.scenario {
        Scenario::R => format!(
            "{} x {} rows, source and replicas under oltp_read_only",
            plan.tables, plan.rows
        ),
        Scenario::W => format!(
            "TPC-C-like, {} warehouses ({} items, {} customers and {} orders per district), \
             source under tpcc.lua (New-Order + Payment), replicas under tpcc_read.lua",
            plan.tpcc.warehouses, plan.tpcc.items, plan.tpcc.customers, plan.tpcc.orders
        ),
    }
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.0} GiB RAM", kb as f64 / 1048576.0))
        .unwrap_or_else(|| "RAM unknown".into())
}

fn utc_stamp() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M%S"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    out.filter(|s| !s.is_empty())
        .unwrap_or_else(|| "now".into())
}
