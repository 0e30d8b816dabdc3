//! One run of scenario R for one (storage, configuration): a fresh source under
//! load, a replica forked every interval with its own load, series recorded.

use crate::csv::row;
use crate::metrics::{mean_in, time_to_reach};
use crate::parse::interval_samples;
use crate::sampler::{Sampler, Target, VolumeFigures};
use crate::{stopped, Plan, Scenario, Storage};
use anyhow::{bail, Context, Result};
use dbinstance::{Instance, InstanceConfig};
use experiments_support::dbfork::config_of;
use experiments_support::{native_clone, Dbfork};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use substrate::local::server::Launch;
use substrate::local::DiskReadLimit;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Config {
    /// DBMS-native: mariadb-backup backup, prepare, copy-back, start, replicate.
    Default,
    /// Lazy volume, sharing off (the buffer pool loads the snapshot's dump).
    Lazy,
    /// Full copy before start, sharing on.
    Share,
    /// Lazy volume, sharing on.
    LazyShare,
    /// Warm-up anchor: full copy, sharing off, buffer pool left empty at start.
    Cold,
    /// Warm-up anchor: full copy, sharing off, buffer pool loaded at startup from
    /// the source's dump (innodb_buffer_pool_load_at_startup).
    Dump,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Default => "default",
            Config::Lazy => "lazy",
            Config::Share => "share",
            Config::LazyShare => "lazy_share",
            Config::Cold => "cold",
            Config::Dump => "dump",
        }
    }

    /// The warm-up anchors: one replica each, for the warm-up figure.
    pub fn is_anchor(self) -> bool {
        matches!(self, Config::Cold | Config::Dump)
    }

    /// `dbfork clone` options of a dbfork configuration (None: the native path).
    pub fn clone_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Default => None,
            Config::Lazy => Some(&["--no-sharing"]),
            Config::Share => Some(&["--hydrate-first"]),
            Config::LazyShare => Some(&[]),
            Config::Cold => Some(&["--hydrate-first", "--no-sharing", "--no-buffer-pool-load"]),
            Config::Dump => Some(&["--hydrate-first", "--no-sharing"]),
        }
    }
}

/// What one replica did, for replicas.csv and the summary.
#[derive(Clone, Debug)]
pub struct ReplicaResult {
    pub storage: Storage,
    pub config: Config,
    pub name: String,
    pub fork_at_s: f64,
    /// Fork start to a server that answers queries (clone command returned).
    pub first_query_s: f64,
    /// Fork start to the replica's trailing 3 s mean reaching 90% of the source's
    /// concurrent tps.
    pub t90_source_s: Option<f64>,
    /// Fork start to 90% of the replica's own steady tps (its last 20 s).
    pub t90_own_s: Option<f64>,
    pub steady_tps: Option<f64>,
    pub volume: VolumeFigures,
}

pub struct RunResult {
    pub scenario: Scenario,
    pub storage: Storage,
    pub config: Config,
    /// The first replica's tps, time since its fork (the warm-up figure).
    pub first_replica_tps: Vec<(f64, f64)>,
    pub source_alone_tps: Option<f64>,
    pub replicas: Vec<ReplicaResult>,
    /// (t, total tps) and (t, total PSS bytes), one per second.
    pub total_tps: Vec<(f64, f64)>,
    pub total_pss: Vec<(f64, f64)>,
    pub fork_marks: Vec<f64>,
}

/// A sysbench client whose stdout goes to a file; killed on Drop.
struct Load {
    name: String,
    child: Child,
    out: PathBuf,
    started_at_s: f64,
}

impl Load {
    /// Ends the client; sysbench has written each per-second line as it went.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a sysbench client runs: a bundled test or one of our Lua scripts, with its
/// dataset arguments.
pub struct Workload {
    pub script: String,
    pub args: Vec<String>,
}

impl Workload {
    /// The source's load and the replicas' load of a scenario.
    pub fn of(plan: &Plan, replica: bool) -> Workload {
        match plan.scenario {
            Scenario::R => Workload {
                script: "oltp_read_only".into(),
                args: vec![
                    "--mysql-db=sbtest".into(),
                    format!("--tables={}", plan.tables),
                    format!("--table-size={}", plan.rows),
                ],
            },
            Scenario::W => {
                let script = if replica { "tpcc_read.lua" } else { "tpcc.lua" };
                let mut args = vec!["--mysql-db=tpcc".to_string()];
                args.extend(plan.tpcc.args());
                if !replica {
                    // Deadlocks and lock waits between New-Orders restart the transaction.
                    args.push("--mysql-ignore-errors=1213,1205".into());
                }
                Workload {
                    script: tpcc_dir().join(script).display().to_string(),
                    args,
                }
            }
        }
    }
}

pub fn tpcc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tpcc")
}

/// Starts a client that runs until [`Load::stop`] (sysbench --time=0): the run's end
/// is only known once the last replica is ready.
fn start_load(plan: &Plan, name: &str, socket: &Path, out: PathBuf, t0: Instant) -> Result<Load> {
    let w = Workload::of(plan, name != "src");
    let file =
        std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let child = Command::new("sysbench")
        .arg(&w.script)
        .arg("--db-driver=mysql")
        .arg(format!("--mysql-socket={}", socket.display()))
        .arg("--mysql-user=root")
        .args(&w.args)
        .arg(format!("--threads={}", plan.threads))
        .arg("--time=0")
        .arg("--report-interval=1")
        .arg("run")
        .stdin(Stdio::null())
        .stdout(
            file.try_clone()
                .context("duplicating the sysbench output file")?,
        )
        .stderr(file)
        .spawn()
        .context("spawning sysbench (apt-get install sysbench)")?;
    Ok(Load {
        name: name.to_string(),
        child,
        out,
        started_at_s: t0.elapsed().as_secs_f64(),
    })
}

/// Loads the scenario's dataset into the source and drops the load's binlog (the
/// replicas start after it; mariadb-backup does not copy binlogs either).
fn prepare(plan: &Plan, source: &Instance) -> Result<()> {
    match plan.scenario {
        Scenario::R => {
            let prep = workload::sysbench::SysbenchOptions {
                tables: plan.tables,
                table_size: plan.rows,
                threads: plan.tables.min(2),
                ..Default::default()
            };
            workload::sysbench::prepare(source, &prep).context("sysbench prepare on the source")?;
        }
        Scenario::W => {
            source.exec("CREATE DATABASE IF NOT EXISTS tpcc")?;
            let st = Command::new("sysbench")
                .arg(tpcc_dir().join("tpcc.lua"))
                .arg("--db-driver=mysql")
                .arg(format!(
                    "--mysql-socket={}",
                    source.config().socket_path().display()
                ))
                .arg("--mysql-user=root")
                .arg("--mysql-db=tpcc")
                .args(plan.tpcc.args())
                .arg("--threads=2")
                .arg("prepare")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .context("spawning sysbench tpcc.lua prepare")?;
            if !st.success() {
                bail!("sysbench tpcc.lua prepare: {st}");
            }
        }
    }
    source.exec("FLUSH BINARY LOGS")?;
    source.exec("PURGE BINARY LOGS BEFORE NOW()")?;
    Ok(())
}

/// Destroys the source and its replicas, then removes the store, on every exit path.
struct StoreGuard {
    dbfork: Dbfork,
    source: Option<String>,
    dir: Option<tempfile::TempDir>,
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        if let Some(s) = self.source.take() {
            if let Err(e) = self.dbfork.destroy(&s) {
                eprintln!("cleanup: dbfork destroy {s} --with-replicas: {e:#}");
            }
        }
        if let Some(d) = self.dir.take() {
            let mounted = std::fs::read_to_string("/proc/self/mounts")
                .map(|m| m.contains(&*d.path().to_string_lossy()))
                .unwrap_or(true);
            if mounted {
                eprintln!(
                    "cleanup: something is still mounted under {}; left for a person",
                    d.path().display()
                );
                std::mem::forget(d);
            }
        }
    }
}

/// A native replica, stopped on Drop (its dir goes with the TempDir), then its IO
/// group removed.
struct NativeReplica {
    instance: Instance,
    /// Dropped after the server is stopped (the guard's own drop runs first).
    _limit: Option<DiskReadLimit>,
    _dir: tempfile::TempDir,
}

impl Drop for NativeReplica {
    fn drop(&mut self) {
        if self.instance.is_running()
            && self
                .instance
                .stop_with_timeout(Duration::from_secs(60))
                .is_err()
        {
            let _ = self.instance.kill();
        }
    }
}

/// dbfork replicas of one configuration, destroyed on every exit path so the next
/// configuration starts from the source alone.
struct ReplicaGuard<'a> {
    dbfork: &'a Dbfork,
    names: Vec<String>,
}

impl Drop for ReplicaGuard<'_> {
    fn drop(&mut self) {
        for n in self.names.drain(..).rev() {
            if let Err(e) = self.dbfork.json(&["destroy", &n]) {
                eprintln!("cleanup: dbfork destroy {n}: {e:#}");
            }
        }
    }
}

/// One scenario's source, loaded once and forked by every configuration in turn
/// (loading the dataset is the largest fixed cost of a run).
pub struct Source {
    pub dbfork: Dbfork,
    pub cfg: InstanceConfig,
    instance: Instance,
    base: PathBuf,
    _guard: StoreGuard,
}

impl Source {
    pub fn create(plan: &Plan, bar: &ProgressBar) -> Result<Source> {
        let base = tempfile::Builder::new()
            .prefix(&format!("paper-{}-", plan.scenario.name()))
            .tempdir_in(&plan.base_dir)
            .context("temp dir for the store")?;
        let dbfork = Dbfork::new(&plan.dbfork, base.path().join("store"));
        let base_path = base.path().to_path_buf();
        let mut guard = StoreGuard {
            dbfork: dbfork.clone(),
            source: Some("src".into()),
            dir: Some(base),
        };
        bar.set_message(format!("{}: creating the source", plan.scenario.name()));
        let cfg = dbfork.source_create("src", &plan.volume_size, &plan.buffer_pool, &[])?;
        let instance = Instance::open(cfg.clone()).context("opening the source")?;
        bar.set_message(format!("{}: loading the dataset", plan.scenario.name()));
        // Loading is setup: the slow-disk model (storage hdd) is off meanwhile.
        if let Some(m) = &plan.io_model {
            m.off()?;
        }
        prepare(plan, &instance)?;
        if let Some(m) = &plan.io_model {
            crate::say(bar, format!("slow disk on: {}", m.describe()));
            m.on()?;
        }
        guard.source = Some("src".into());
        Ok(Source {
            dbfork,
            cfg,
            instance,
            base: base_path,
            _guard: guard,
        })
    }
}

/// When replica `k` (1-based) is forked: after a lead with the source alone, one
/// every interval.
pub fn fork_at(plan: &Plan, k: u32) -> u64 {
    plan.lead + plan.interval * (k as u64 - 1)
}

pub fn run_one(
    plan: &Plan,
    src: &Source,
    storage: Storage,
    config: Config,
    dir: &Path,
    bar: &ProgressBar,
) -> Result<RunResult> {
    let scn = plan.scenario.name();
    let tag = format!("{scn}/{}/{}", storage.name(), config.name());
    let dbfork = &src.dbfork;
    let n_replicas = if config.is_anchor() {
        plan.anchor_replicas
    } else {
        plan.replicas
    };
    let planned_end = fork_at(plan, n_replicas) + plan.interval;
    // A replica whose creation outlasted the interval still gets this long under load.
    let min_life = plan.interval.min(20);
    let t0 = Instant::now();
    let prefix = vec![
        scn.to_string(),
        storage.name().to_string(),
        config.name().to_string(),
    ];
    let file = |who: &str, instance: &str, ext: &str| {
        dir.join(format!(
            "{who}-{scn}-{}-{}-{instance}.{ext}",
            storage.name(),
            config.name()
        ))
    };
    let mut sampler = Sampler::start(t0, prefix.clone(), Some(dbfork.clone()));
    sampler.add(Target {
        name: "src".into(),
        pid_file: src.cfg.pid_file(),
        dbfork_replica: false,
    });
    let mut loads = vec![start_load(
        plan,
        "src",
        &src.cfg.socket_path(),
        file("sysbench", "src", "txt"),
        t0,
    )?];
    let mut natives: Vec<NativeReplica> = Vec::new();
    let mut replicas_made = ReplicaGuard {
        dbfork,
        names: Vec::new(),
    };
    let mut forks: Vec<(String, f64, f64)> = Vec::new();
    let mut fork_marks = Vec::new();

    for k in 1..=n_replicas {
        let due = Duration::from_secs(fork_at(plan, k));
        wait_until(
            t0,
            due,
            bar,
            &format!("{tag}: replica {k} due at {} s", due.as_secs()),
            planned_end,
        )?;
        let name = format!("r{k}");
        let fork_at = t0.elapsed().as_secs_f64();
        fork_marks.push(fork_at);
        bar.set_message(format!("{tag}: forking {name}"));
        let (cfg, dbfork_replica) = match config.clone_flags() {
            None => {
                let rdir = tempfile::Builder::new()
                    .prefix("native-")
                    .tempdir_in(&src.base)?;
                let mut cfg =
                    InstanceConfig::in_dir(&name, rdir.path(), dbinstance::free_port()?, 100 + k);
                cfg.buffer_pool_size = src.cfg.buffer_pool_size;
                // Throttled: the server's reads on the disk its datadir is on, from its
                // first instruction (the start gate), as dbfork does for its replicas.
                let limit = match storage {
                    // Hdd: the whole run's disk is slow already.
                    Storage::Plain | Storage::Hdd => None,
                    Storage::Throttled => Some(DiskReadLimit::on_disk_of(
                        rdir.path(),
                        &format!("paperrun-{}-{name}", std::process::id()),
                        plan.read_iops,
                    )?),
                };
                let launch = Launch {
                    io_limit: limit.as_ref().map(DiskReadLimit::record),
                    die_with_parent: true,
                    ..Launch::default()
                };
                let c = native_clone(&src.instance, cfg, &launch)
                    .with_context(|| format!("native clone {name}"))?;
                let cfg = c.instance.config().clone();
                natives.push(NativeReplica {
                    instance: c.instance,
                    _limit: limit,
                    _dir: rdir,
                });
                (cfg, false)
            }
            Some(flags) => {
                let iops = plan.read_iops.to_string();
                let mut args = vec!["clone", "src", name.as_str()];
                args.extend_from_slice(flags);
                if storage == Storage::Throttled {
                    args.extend(["--read-iops", iops.as_str()]);
                }
                replicas_made.names.push(name.clone());
                let v = dbfork.json(&args)?;
                // dbfork's own phase times, for explaining the first-query figure.
                let _ = std::fs::write(
                    file("clone", &name, "json"),
                    serde_json::to_string_pretty(&v["clone"]).unwrap_or_default(),
                );
                (config_of(&v)?, true)
            }
        };
        let ready = t0.elapsed().as_secs_f64();
        sampler.add(Target {
            name: name.clone(),
            pid_file: cfg.pid_file(),
            dbfork_replica,
        });
        if ready + min_life as f64 > planned_end as f64 {
            crate::say(bar, format!(
                "{tag}: {name} took {:.0} s to create; the run is extended so it runs {min_life} s under load",
                ready - fork_at
            ));
        }
        loads.push(start_load(
            plan,
            &name,
            &cfg.socket_path(),
            file("sysbench", &name, "txt"),
            t0,
        )?);
        forks.push((name, fork_at, ready));
    }
    let last_ready = forks.last().map(|f| f.2).unwrap_or(0.0);
    let total_secs = planned_end.max((last_ready + min_life as f64).ceil() as u64);
    wait_until(
        t0,
        Duration::from_secs(total_secs),
        bar,
        &format!("{tag}: last replica under load"),
        total_secs,
    )?;
    for l in &mut loads {
        l.stop();
    }
    sampler.stop();

    // Series, each sample placed on the run's clock.
    let mut tps_rows = Vec::new();
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for l in &mut loads {
        let text = std::fs::read_to_string(&l.out).unwrap_or_default();
        let s: Vec<(f64, f64)> = interval_samples(&text)
            .into_iter()
            .map(|(t, tps)| (l.started_at_s + t as f64, tps))
            .collect();
        for (t, tps) in &s {
            let mut f = prefix.clone();
            f.extend([format!("{t:.1}"), l.name.clone(), format!("{tps:.2}")]);
            tps_rows.push(row(&f));
        }
        series.push((l.name.clone(), s));
    }
    append(
        &dir.join("tps.csv"),
        "scenario,storage,config,t_s,instance,tps\n",
        &tps_rows,
    )?;
    append(
        &dir.join("memory.csv"),
        "scenario,storage,config,t_s,instance,pss_bytes\n",
        &sampler.memory_rows.lock().unwrap(),
    )?;
    append(
        &dir.join("hydration.csv"),
        "scenario,storage,config,t_s,instance,hydrated_bytes,size,on_demand_bytes,background_bytes,shared_pages,copied_bytes\n",
        &sampler.hydration_rows.lock().unwrap(),
    )?;

    let src_series = series[0].1.clone();
    let first_fork = fork_marks.first().copied().unwrap_or(plan.lead as f64);
    let source_alone_tps = mean_in(&src_series, first_fork * 0.3, first_fork);
    let volumes = sampler.volumes.lock().unwrap().clone();
    let mut replicas = Vec::new();
    for (i, (name, fork_at, ready)) in forks.iter().enumerate() {
        let s = &series[i + 1].1;
        let end = s.last().map(|x| x.0).unwrap_or(0.0);
        let steady = mean_in(s, end - 20.0, end + 1.0);
        let src_at = |t: f64| mean_in(&src_series, t - 3.0, t + 0.5);
        let t90_source = time_to_reach(s, *ready, 3, 0.9, src_at).map(|t| t - fork_at);
        let t90_own = steady
            .and_then(|st| time_to_reach(s, *ready, 3, 0.9, |_| Some(st)).map(|t| t - fork_at));
        replicas.push(ReplicaResult {
            storage,
            config,
            name: name.clone(),
            fork_at_s: *fork_at,
            first_query_s: ready - fork_at,
            t90_source_s: t90_source,
            t90_own_s: t90_own,
            steady_tps: steady,
            volume: volumes.get(name).cloned().unwrap_or_default(),
        });
    }
    let first_replica_tps = match (forks.first(), series.get(1)) {
        (Some((_, at, _)), Some((_, s))) => s.iter().map(|(t, y)| (t - at, *y)).collect(),
        _ => Vec::new(),
    };
    // The clients stop within a second of each other; the last partial seconds
    // would show as a fake drop.
    let end = total_secs as f64 - 1.0;
    let total_tps: Vec<(f64, f64)> = sum_by_second(
        series
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .filter(|(t, _)| *t < end),
    );
    let mem: Vec<(String, f64, f64)> = sampler
        .memory_rows
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| {
            let f: Vec<&str> = r.trim().split(',').collect();
            Some((
                f.get(4)?.to_string(),
                f.get(3)?.parse().ok()?,
                f.get(5)?.parse().ok()?,
            ))
        })
        .collect();
    let total_pss = sum_by_second(last_per_second(mem).into_iter().map(|(_, t, y)| (t, y)));

    bar.set_message(format!("{tag}: cleaning up"));
    drop(loads);
    drop(natives);
    drop(replicas_made);
    Ok(RunResult {
        scenario: plan.scenario,
        storage,
        config,
        first_replica_tps,
        source_alone_tps,
        replicas,
        total_tps,
        total_pss,
        fork_marks,
    })
}

/// Keeps one sample per (instance, whole second): the last. Summing instances per
/// second must not count an instance twice.
pub fn last_per_second(samples: Vec<(String, f64, f64)>) -> Vec<(String, f64, f64)> {
    let mut m: std::collections::BTreeMap<(String, i64), (f64, f64)> = Default::default();
    for (name, t, y) in samples {
        m.insert((name, t.floor() as i64), (t, y));
    }
    m.into_iter().map(|((n, _), (t, y))| (n, t, y)).collect()
}

/// Sums samples into whole-second buckets (floor of t).
pub fn sum_by_second(samples: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut m: std::collections::BTreeMap<i64, f64> = Default::default();
    for (t, y) in samples {
        *m.entry(t.floor() as i64).or_default() += y;
    }
    m.into_iter().map(|(t, y)| (t as f64, y)).collect()
}

fn wait_until(t0: Instant, at: Duration, bar: &ProgressBar, what: &str, total: u64) -> Result<()> {
    loop {
        if stopped() {
            bail!("interrupted");
        }
        let now = t0.elapsed();
        bar.set_message(format!("{what} ({} / {total} s)", now.as_secs()));
        bar.tick();
        if now >= at {
            return Ok(());
        }
        std::thread::sleep((at - now).min(Duration::from_millis(500)));
    }
}

fn append(path: &Path, header: &str, rows: &[String]) -> Result<()> {
    use std::io::Write;
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if new {
        f.write_all(header.as_bytes())?;
    }
    for r in rows {
        f.write_all(r.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_per_instance_and_second() {
        let s = vec![
            ("a".to_string(), 1.1, 5.0),
            ("a".to_string(), 1.2, 7.0),
            ("b".to_string(), 1.3, 1.0),
            ("a".to_string(), 2.0, 9.0),
        ];
        let kept = last_per_second(s);
        let total = sum_by_second(kept.into_iter().map(|(_, t, y)| (t, y)));
        assert_eq!(total, vec![(1.0, 8.0), (2.0, 9.0)]);
    }

    #[test]
    fn sums_into_seconds() {
        let s = sum_by_second([(1.2, 1.0), (1.9, 2.0), (2.0, 5.0)].into_iter());
        assert_eq!(s, vec![(1.0, 3.0), (2.0, 5.0)]);
    }
}
