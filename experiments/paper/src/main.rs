//! paperrun: the dbfork paper's evaluation (seeds/004 section 5, figures 3-6) at
//! this machine's scale. See README.md.

mod csv;
mod metrics;
mod parse;
mod plot;
mod report;
mod run;
mod sampler;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use experiments_support::io_model::IoModel;
use experiments_support::Dbfork;
use indicatif::{ProgressBar, ProgressStyle};
use run::{Config, RunResult};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// This machine: 4 x 100k-row tables, 256M buffer pools, a replica every 25 s
    /// after a 10 s lead, 2 replicas (1 per warm-up anchor), R and W, plain and
    /// throttled: the whole matrix in ~22 minutes.
    Small,
    /// GB scale on this machine (issue 12): 8 x 1M rows (~2 GB; --rows 4000000
    /// --buffer-pool 8G --replicas 1 for ~8 GB), pools the size of the data, 4
    /// replicas every 60 s after a 30 s lead, the native path against dbfork, on hdd
    /// storage (`experiments/run --scale medium` sets up the store and the IO model).
    Medium,
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
    /// Plain and throttled.
    Both,
    /// The whole store's disk slow for every process of the run (--hdd-group).
    Hdd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Plain,
    /// Replicas' own reads limited (`--read-iops`).
    Throttled,
    /// Every process of the run on one slow disk (the IO model of `--hdd-group`).
    Hdd,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::Plain => "plain",
            Storage::Throttled => "throttled",
            Storage::Hdd => "hdd",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Reproduce the dbfork paper's figures 3-6 at this machine's scale")]
struct Args {
    #[arg(long, value_enum, default_value = "small")]
    scale: Scale,
    /// Scenarios, each with its own source (loaded once, forked by every configuration).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "r,w")]
    scenario: Vec<Scenario>,
    /// Configurations, run one after another against the scenario's source. Default:
    /// default,lazy,share,lazy_share on each storage, plus the warm-up anchors
    /// cold,dump on throttled storage (on plain storage every replica is warm in
    /// seconds, so the anchors add nothing there but minutes).
    #[arg(long, value_enum, value_delimiter = ',')]
    configs: Option<Vec<Config>>,
    /// plain: the volume as is; throttled: replicas' reads limited to --read-iops;
    /// hdd: every process of the run on one slow disk (needs --hdd-group). Default:
    /// both (plain and throttled); hdd at scale medium.
    #[arg(long, value_enum)]
    storage: Option<StorageArg>,
    #[command(flatten)]
    hdd: experiments_support::io_model::HddArgs,
    /// Buffer pool of every instance (default: the scale's).
    #[arg(long)]
    buffer_pool: Option<String>,
    /// Volume of the source (default: the scale's).
    #[arg(long)]
    volume_size: Option<String>,
    /// Seconds between replica forks (the paper: 3500).
    #[arg(long)]
    interval: Option<u64>,
    /// Seconds of the source alone before the first fork (the paper: one interval).
    #[arg(long)]
    lead: Option<u64>,
    /// Replicas forked per configuration (the paper: 8).
    #[arg(long)]
    replicas: Option<u32>,
    /// Replicas forked per warm-up anchor (cold, dump).
    #[arg(long)]
    anchor_replicas: Option<u32>,
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
    pub lead: u64,
    pub replicas: u32,
    pub anchor_replicas: u32,
    pub read_iops: u32,
    /// The slow-disk model of storage hdd.
    pub io_model: Option<IoModel>,
}

/// A line above the progress bar; on a log (stderr not a terminal, where the bar
/// draws nothing) a plain line instead.
pub fn say(bar: &ProgressBar, msg: String) {
    if std::io::stderr().is_terminal() {
        bar.println(msg);
    } else {
        eprintln!("{msg}");
    }
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
    let (tables, rows, pool, vol, interval, lead, replicas, anchors) = match a.scale {
        Scale::Small => (4, 100_000, "256M", "4G", 25, 10, 2, 1),
        Scale::Medium => (8, 1_000_000, "2G", "16G", 60, 30, 4, 1),
        Scale::Paper => (68, 1_000_000, "15G", "40G", 3500, 3500, 8, 2),
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
        // Medium: the spec's cardinalities, ~1 GB (loading more takes longer than
        // the run on this machine).
        Scale::Medium => Tpcc {
            warehouses: a.warehouses.unwrap_or(10),
            items: 100_000,
            customers: 3000,
            orders: 3000,
        },
        Scale::Paper => Tpcc {
            warehouses: a.warehouses.unwrap_or(170),
            items: 100_000,
            customers: 3000,
            orders: 3000,
        },
    };
    let plan = Plan {
        scenario: a.scenario[0],
        tpcc,
        dbfork: Dbfork::locate(None)?,
        base_dir: a.base_dir.clone(),
        tables: a.tables.unwrap_or(tables),
        rows: a.rows.unwrap_or(rows),
        threads: 2,
        buffer_pool: a.buffer_pool.clone().unwrap_or_else(|| pool.into()),
        volume_size: a.volume_size.clone().unwrap_or_else(|| vol.into()),
        interval: a.interval.unwrap_or(interval),
        lead: a.lead.unwrap_or(lead),
        replicas: a.replicas.unwrap_or(replicas),
        anchor_replicas: a.anchor_replicas.unwrap_or(anchors),
        read_iops: a.read_iops,
        io_model: a.hdd.model(),
    };
    let storage = a.storage.unwrap_or(match a.scale {
        Scale::Medium => StorageArg::Hdd,
        _ => StorageArg::Both,
    });
    let storages = match storage {
        StorageArg::Plain => vec![Storage::Plain],
        StorageArg::Throttled => vec![Storage::Throttled],
        StorageArg::Both => vec![Storage::Plain, Storage::Throttled],
        StorageArg::Hdd => vec![Storage::Hdd],
    };
    if storages.contains(&Storage::Hdd) && plan.io_model.is_none() {
        bail!(
            "storage hdd needs the IO model: --hdd-group (a blkio cgroup this run is in) and \
             --hdd-device; `experiments/run --scale medium` sets both up"
        );
    }
    // The model is off while datasets load; on for the runs (`run::Source::create`).
    if let Some(m) = &plan.io_model {
        m.off()?;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = repo.canonicalize().unwrap_or(repo);
    let stamp = utc_stamp();
    let scale = format!("{:?}", a.scale).to_lowercase();
    let out = a.out.clone().unwrap_or_else(|| {
        repo.join("experiments/out")
            .join(format!("{}-{scale}-{stamp}", scenario_tag(&a.scenario)))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!("paperrun: {plan:?}\n  output in {}", out.display());

    // The work list: per scenario, per storage, the configurations.
    let configs_for = |storage: Storage| -> Vec<Config> {
        match &a.configs {
            Some(c) => c.clone(),
            None => {
                let mut c = vec![
                    Config::Default,
                    Config::Lazy,
                    Config::Share,
                    Config::LazyShare,
                ];
                if storage == Storage::Throttled {
                    c.extend([Config::Cold, Config::Dump]);
                }
                if storage == Storage::Hdd {
                    // The native path against dbfork's full configuration: GB-scale runs
                    // are long.
                    c = vec![Config::Default, Config::LazyShare];
                }
                c
            }
        }
    };
    let total: usize = a.scenario.len()
        * storages
            .iter()
            .map(|&s| configs_for(s).len())
            .sum::<usize>();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] run {pos}/{len} {wide_msg}")
            .expect("static template"),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let started = Instant::now();
    let mut results: Vec<RunResult> = Vec::new();
    let mut failures = Vec::new();
    for &scenario in &a.scenario {
        if stopped() {
            break;
        }
        let plan = Plan {
            scenario,
            ..plan.clone()
        };
        let source = match run::Source::create(&plan, &bar) {
            Ok(s) => s,
            Err(e) => {
                let n: usize = storages.iter().map(|&s| configs_for(s).len()).sum();
                crate::say(&bar, format!("{}: source FAILED: {e:#}", scenario.name()));
                failures.push(format!("{}: source: {e:#}", scenario.name()));
                bar.inc(n as u64);
                continue;
            }
        };
        for &storage in &storages {
            for config in configs_for(storage) {
                if stopped() {
                    break;
                }
                let what = format!("{}/{}/{}", scenario.name(), storage.name(), config.name());
                // The bar draws only on a terminal; a log gets a line per run.
                if !std::io::stderr().is_terminal() {
                    eprintln!(
                        "[{:>4} s] run {}/{total}: {what}",
                        started.elapsed().as_secs(),
                        bar.position() + 1
                    );
                }
                match run::run_one(&plan, &source, storage, config, &out, &bar) {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        crate::say(&bar, format!("{what}: FAILED: {e:#}"));
                        failures.push(format!("{what}: {e:#}"));
                    }
                }
                bar.inc(1);
            }
        }
        bar.set_message(format!("{}: destroying the source", scenario.name()));
        drop(source);
    }
    bar.finish_with_message("done");
    let wall = started.elapsed();

    write_replicas_csv(&out, &results)?;
    let mut md = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    let scenarios: Vec<&str> = a.scenario.iter().map(|s| s.name()).collect();
    md.push_str(&format!(
        "\n### paperrun, scenario {}, scale {scale}, {stamp}\n\n\
         Command: `experiments/run {}` (wall {:.1} min). Machine: 2-core VM, Debian 12, {}.\n\
         Buffer pool {} per instance, sysbench {} threads per instance; the source alone for {} s, \
         then a replica every {} s, {} replicas per configuration ({} per warm-up anchor), each \
         configuration against the scenario's one source. Throttled = every read a replica's server \
         makes on its own volume limited to {} per second from its first instruction \
         (`dbfork clone --read-iops`; native: the same kernel IO limit on the disk of its datadir); \
         copying (mariadb-backup, background hydration) is not throttled.{} Output: `{}`.\n\n",
        scenarios.join(" and "),
        cmd[1..].join(" "),
        wall.as_secs_f64() / 60.0,
        mem_total(),
        plan.buffer_pool,
        plan.threads,
        plan.lead,
        plan.interval,
        plan.replicas,
        plan.anchor_replicas,
        plan.read_iops,
        plan.io_model.as_ref().map_or(String::new(), |m| format!(
            " Hdd = {} (off while a dataset loads).",
            m.describe()
        )),
        out.strip_prefix(&repo).unwrap_or(&out).display(),
    ));
    for &scenario in &a.scenario {
        let plan = Plan {
            scenario,
            ..plan.clone()
        };
        md.push_str(&format!(
            "Scenario {}: {}.\n\n",
            scenario.name(),
            dataset(&plan)
        ));
        for &storage in &storages {
            let runs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.storage == storage && r.scenario == scenario)
                .collect();
            if runs.is_empty() {
                continue;
            }
            md.push_str(&report::section(storage, &runs, scenario.name()));
            md.push('\n');
            match plot::figures(&out, storage, &runs, scenario) {
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
                if let Err(e) = plot::per_instance(&out, r, &out.join("tps.csv"), scenario.name()) {
                    md.push_str(&format!("(per-instance figure failed: {e:#})\n"));
                }
            }
            md.push('\n');
        }
    }
    for f in &failures {
        md.push_str(&format!("FAILED: {f}\n"));
    }
    std::fs::write(out.join("summary.md"), &md)?;
    let results_md = a
        .results
        .clone()
        .unwrap_or_else(|| repo.join("docs/results.md"));
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
        "storage,config,replica,fork_at_s,first_query_s,t90_source_s,t90_own_s,steady_tps,on_demand_bytes,background_bytes,hydrated_bytes,size,shared_pages,copied_bytes\n",
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
                x.volume.copied_bytes.to_string(),
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

fn scenario_tag(s: &[Scenario]) -> String {
    s.iter().map(|s| s.name()).collect::<Vec<_>>().join("")
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
