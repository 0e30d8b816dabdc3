//! The measurements, in one run against one dbfork source: time to first query
//! per dataset size (dbfork clone vs native), the source's throughput around a
//! clone, and how fast a fresh replica reaches the source's read throughput.

use crate::cleanup::{ReplicaGuard, StoreGuard};
use crate::dbfork_cli::{self, CloneRun};
use crate::native::{self, NativeReplica};
use crate::probe::FirstQueryProbe;
use crate::window::{seconds_to_reach, window, WindowStats};
use anyhow::{bail, Context, Result};
use dbinstance::Instance;
use experiments_support::{Dbfork, NativeCloneTimings};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use workload::sysbench::{self, SysbenchOptions, SysbenchResult};

pub const SOURCE: &str = "cbsrc";
const DB: &str = "sbtest";
/// Native replicas get server_ids far from dbfork's small sequential ones.
const NATIVE_SERVER_ID_BASE: u32 = 4000;

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// (tables, rows per table), smallest first.
    pub sizes: Vec<(u32, u64)>,
    pub reps: usize,
    /// Extra clones per method and size with the page cache dropped first.
    pub cold_runs: usize,
    pub volume_size: String,
    /// Region size of the source's volume (dbfork source create --region-size).
    pub source_region_size: String,
    pub buffer_pool: String,
    pub threads: u32,
    /// sysbench tests for the throughput part; empty skips it.
    pub tests: Vec<String>,
    /// Index into `sizes` of the dataset the throughput and warm-up parts use.
    pub load_size: usize,
    pub load_secs: u32,
    pub clone_at_secs: u32,
    pub window_secs: u32,
    /// Replica read-only run length for the warm-up part; 0 skips it.
    pub warmup_secs: u32,
    pub base_dir: PathBuf,
    pub dbfork_exe: PathBuf,
    /// The slow-disk model, when the run is in one.
    pub io_model: Option<experiments_support::io_model::IoModel>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NativeRun {
    /// Page cache dropped right before the clone.
    pub cold_cache: bool,
    pub timings: NativeCloneTimings,
    /// backup + prepare + copy-back + start.
    pub until_first_query_ms: u64,
    /// The outside observer's figure (clone start to a row of sbtest1 read).
    pub probe_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DbforkRun {
    pub cold_cache: bool,
    pub clone: CloneRun,
    pub probe_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    pub tables: u32,
    pub rows: u64,
    pub data_bytes: u64,
    pub datadir_bytes: u64,
    pub prepare_secs: f64,
    pub dbfork: Vec<DbforkRun>,
    pub native: Vec<NativeRun>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ThroughputResult {
    pub test: String,
    pub method: String,
    pub tables: u32,
    pub rows: u64,
    /// When the clone started and ended, seconds since the load started.
    pub clone_start_s: f64,
    pub clone_end_s: f64,
    pub before: Option<WindowStats>,
    pub during: Option<WindowStats>,
    /// Over the clone command itself (start to return), when it lasted >= 1 s.
    pub during_command: Option<WindowStats>,
    /// From the window's end to the end of the load: does the effect last?
    pub after: Option<WindowStats>,
    pub hold_ms: Option<u64>,
    /// dbfork's own phase times for this clone.
    pub dbfork_phases: Option<CloneRun>,
    /// The replica's hydration at the end of the window (dbfork only).
    pub hydrated_percent_at_window_end: Option<f64>,
    pub tps_series: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WarmupResult {
    pub method: String,
    pub source_tps: f64,
    /// Clone start until the replica answered (the outside probe, else the tool's).
    pub first_query_ms: u64,
    /// Seconds of replica load until one second reached 90% of `source_tps`.
    pub secs_to_90: Option<u32>,
    pub tps_series: Vec<f64>,
    /// dbfork: the replica's and the source's sharing counters after the load (why a
    /// replica was or was not warm: pages shared, misses, a full pool).
    pub sharing: Option<SharingCounters>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SharingCounters {
    pub replica_shared: u64,
    pub replica_lookup_misses: u64,
    pub replica_sharing_off: Option<String>,
    pub source_frames_revalidated: u64,
    pub source_scan_frames_pooled: u64,
    pub source_frames_moved: u64,
    pub source_pool_full_drops: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub sizes: Vec<SizeResult>,
    pub throughput: Vec<ThroughputResult>,
    pub warmup: Vec<WarmupResult>,
}

pub struct Bench<'a> {
    plan: &'a Plan,
    dbfork: &'a Dbfork,
    guard: &'a StoreGuard,
    source: Instance,
    counter: u32,
}

impl<'a> Bench<'a> {
    /// Creates the dbfork source the whole run works on.
    pub fn new(plan: &'a Plan, guard: &'a StoreGuard) -> Result<Self> {
        let dbfork = &guard.dbfork;
        say(&format!(
            "creating source {SOURCE} (volume {}, buffer pool {})",
            plan.volume_size, plan.buffer_pool
        ));
        let cfg = dbfork.source_create(
            SOURCE,
            &plan.volume_size,
            &plan.buffer_pool,
            &["--region-size", &plan.source_region_size],
        )?;
        let source = Instance::open(cfg).context("opening the source dbfork made")?;
        Ok(Bench {
            plan,
            dbfork,
            guard,
            source,
            counter: 0,
        })
    }

    pub fn run(&mut self) -> Result<Results> {
        let mut res = Results {
            sizes: Vec::new(),
            throughput: Vec::new(),
            warmup: Vec::new(),
        };
        for (i, &(tables, rows)) in self.plan.sizes.clone().iter().enumerate() {
            let size = self.first_query_at(tables, rows)?;
            res.sizes.push(size);
            if i == self.plan.load_size {
                for test in self.plan.tests.clone() {
                    for method in ["dbfork", "native"] {
                        let r = self.throughput(&test, method, tables, rows)?;
                        res.throughput.push(r);
                    }
                }
                if self.plan.warmup_secs > 0 {
                    let source_tps = res
                        .throughput
                        .iter()
                        .find(|t| t.test == "oltp_read_only")
                        .and_then(|t| t.before.as_ref().map(|b| b.mean_tps));
                    let source_tps = match source_tps {
                        Some(t) => t,
                        None => self.source_alone_tps(tables, rows)?,
                    };
                    for method in ["dbfork", "native"] {
                        let w = self.warmup(method, tables, rows, source_tps)?;
                        res.warmup.push(w);
                    }
                }
            }
        }
        Ok(res)
    }

    fn opts(&self, test: &str, tables: u32, rows: u64, secs: u32) -> SysbenchOptions {
        SysbenchOptions {
            test: test.to_string(),
            db: DB.to_string(),
            tables,
            table_size: rows,
            threads: self.plan.threads,
            secs,
            report_interval: 1,
            ..SysbenchOptions::default()
        }
    }

    fn next_name(&mut self, prefix: &str) -> (String, u32) {
        self.counter += 1;
        (format!("{prefix}{}", self.counter), self.counter)
    }

    /// Part 1 at one size: a fresh dataset, then dbfork and native clones.
    fn first_query_at(&mut self, tables: u32, rows: u64) -> Result<SizeResult> {
        if let Some(m) = &self.plan.io_model {
            m.off()?;
        }
        self.source.exec(&format!("DROP DATABASE IF EXISTS {DB}"))?;
        say(&format!("sysbench prepare {tables} x {rows} rows"));
        let t = Instant::now();
        let mut prep = self.opts("oltp_read_only", tables, rows, 0);
        prep.threads = tables;
        sysbench::prepare(&self.source, &prep)?;
        let prepare_secs = t.elapsed().as_secs_f64();
        // The prepare's binlog is as big as the data; drop it so two datasets fit
        // the volume (mariadb-backup does not copy binlogs either).
        self.source.exec("FLUSH BINARY LOGS")?;
        self.source.exec("PURGE BINARY LOGS BEFORE NOW()")?;
        let data_bytes: u64 = self
            .source
            .query_scalar(&format!(
                "SELECT CAST(SUM(data_length + index_length) AS UNSIGNED) \
                 FROM information_schema.tables WHERE table_schema = '{DB}'"
            ))?
            .unwrap_or(0);
        let datadir_bytes = du_bytes(&self.source.config().datadir);
        self.settle()?;
        if let Some(m) = &self.plan.io_model {
            say(&format!("slow disk on: {}", m.describe()));
            m.on()?;
        }
        let mut size = SizeResult {
            tables,
            rows,
            data_bytes,
            datadir_bytes,
            prepare_secs,
            dbfork: Vec::new(),
            native: Vec::new(),
        };
        for rep in 0..self.plan.reps + self.plan.cold_runs {
            let cold = rep >= self.plan.reps;
            say(&format!(
                "first query, {tables} x {rows}, run {}{}",
                rep + 1,
                if cold { " (page cache dropped)" } else { "" }
            ));
            if cold {
                drop_caches()?;
            }
            let (mut run, replica) = self.dbfork_clone()?;
            run.cold_cache = cold;
            say(&format!(
                "  dbfork: probe {:?} ms, dbfork's first_query_ms {}, command {} ms",
                run.probe_ms, run.clone.first_query_ms, run.clone.command_ms
            ));
            size.dbfork.push(run);
            drop(replica);
            if cold {
                drop_caches()?;
            }
            let (mut run, _native) = self.native_clone()?;
            run.cold_cache = cold;
            say(&format!(
                "  native: probe {:?} ms, backup+prepare+copy+start {} ms, total {} ms",
                run.probe_ms, run.until_first_query_ms, run.timings.total_ms
            ));
            size.native.push(run);
        }
        Ok(size)
    }

    /// One `dbfork clone` of the source, observed from outside.
    fn dbfork_clone(&mut self) -> Result<(DbforkRun, ReplicaGuard<'a>)> {
        let (name, _) = self.next_name("r");
        let socket = self
            .dbfork
            .store
            .join("instances")
            .join(&name)
            .join("mysqld.sock");
        let t0 = Instant::now();
        let probe = FirstQueryProbe::start(socket, first_query_sql());
        // A failed clone unwinds itself (dbfork's undo); only a made one needs a guard.
        let clone = dbfork_cli::clone(self.dbfork, SOURCE, &name)?;
        let guard = ReplicaGuard {
            dbfork: self.dbfork,
            name: name.clone(),
        };
        let probe_ms = probe
            .finish(Duration::from_secs(10))
            .map(|t| t.duration_since(t0).as_millis() as u64);
        Ok((
            DbforkRun {
                cold_cache: false,
                clone,
                probe_ms,
            },
            guard,
        ))
    }

    fn native_clone(&mut self) -> Result<(NativeRun, NativeReplica)> {
        let (name, n) = self.next_name("native");
        let (cfg, dir) = native::replica_config(
            self.source.config(),
            self.guard.scratch(),
            &name,
            NATIVE_SERVER_ID_BASE + n,
        )?;
        let t0 = Instant::now();
        let probe = FirstQueryProbe::start(cfg.socket_path(), first_query_sql());
        let replica = native::clone_native(&self.source, cfg, dir)?;
        let probe_ms = probe
            .finish(Duration::from_secs(10))
            .map(|t| t.duration_since(t0).as_millis() as u64);
        let run = NativeRun {
            cold_cache: false,
            until_first_query_ms: native::until_first_query_ms(&replica.timings),
            timings: replica.timings.clone(),
            probe_ms,
        };
        Ok((run, replica))
    }

    /// Part 2: load on the source, a clone `clone_at_secs` in.
    fn throughput(
        &mut self,
        test: &str,
        method: &str,
        tables: u32,
        rows: u64,
    ) -> Result<ThroughputResult> {
        say(&format!(
            "throughput: {test} on the source for {} s, {method} clone at {} s",
            self.plan.load_secs, self.plan.clone_at_secs
        ));
        let p = self.plan;
        let load = sysbench::start(&self.source, &self.opts(test, tables, rows, p.load_secs))?;
        let t0 = Instant::now();
        sleep_until(t0 + Duration::from_secs(p.clone_at_secs as u64));
        let clone_start = t0.elapsed().as_secs_f64();
        let window_end = t0 + Duration::from_secs((p.clone_at_secs + p.window_secs) as u64);
        let mut hold_ms = None;
        let mut dbfork_phases = None;
        let mut hydrated = None;
        let keep: Keep;
        let clone_end;
        if method == "dbfork" {
            let (run, guard) = self.dbfork_clone()?;
            clone_end = t0.elapsed().as_secs_f64();
            hold_ms = Some(run.clone.hold_ms);
            dbfork_phases = Some(run.clone.clone());
            sleep_until(window_end);
            hydrated = dbfork_cli::hydrated_percent(self.dbfork, &run.clone.name).ok();
            keep = Keep::Dbfork(guard);
        } else {
            let (_, replica) = self.native_clone()?;
            clone_end = t0.elapsed().as_secs_f64();
            keep = Keep::Native(Box::new(replica));
        }
        let out: SysbenchResult = load.wait()?;
        let w = p.window_secs as f64;
        let r = ThroughputResult {
            test: test.to_string(),
            method: method.to_string(),
            tables,
            rows,
            clone_start_s: clone_start,
            clone_end_s: clone_end,
            before: window(&out.intervals, clone_start - w, clone_start),
            during: window(&out.intervals, clone_start, clone_start + w),
            during_command: (clone_end - clone_start >= 1.0)
                .then(|| window(&out.intervals, clone_start, clone_end))
                .flatten(),
            after: window(&out.intervals, clone_start + w, p.load_secs as f64 + 1.0),
            hold_ms,
            dbfork_phases,
            hydrated_percent_at_window_end: hydrated,
            tps_series: out.intervals.iter().map(|s| s.tps).collect(),
        };
        say(&format!(
            "  before {:.0} tps, during {:.0} tps, clone {:.1}-{:.1} s",
            r.before.as_ref().map_or(f64::NAN, |s| s.mean_tps),
            r.during.as_ref().map_or(f64::NAN, |s| s.mean_tps),
            clone_start,
            clone_end
        ));
        drop(keep);
        self.settle()?;
        Ok(r)
    }

    fn source_alone_tps(&mut self, tables: u32, rows: u64) -> Result<f64> {
        say("source alone: oltp_read_only for 10 s");
        let out = sysbench::run(&self.source, &self.opts("oltp_read_only", tables, rows, 10))?;
        Ok(out.tps)
    }

    /// Part 3: clone, then read-only load on the replica alone until it reaches 90%
    /// of what the source did alone.
    fn warmup(
        &mut self,
        method: &str,
        tables: u32,
        rows: u64,
        source_tps: f64,
    ) -> Result<WarmupResult> {
        say(&format!(
            "warm-up: {method} replica, oltp_read_only for {} s",
            self.plan.warmup_secs
        ));
        let opts = self.opts("oltp_read_only", tables, rows, self.plan.warmup_secs);
        let (first_query_ms, out, sharing) = if method == "dbfork" {
            let (run, _guard) = self.dbfork_clone()?;
            let inst = Instance::open(run.clone.config.clone())?;
            let out = sysbench::run(&inst, &opts)?;
            let sharing = self.sharing_counters(&run.clone.name).ok();
            (
                run.probe_ms.unwrap_or(run.clone.first_query_ms),
                out,
                sharing,
            )
        } else {
            let (run, replica) = self.native_clone()?;
            let out = sysbench::run(&replica.instance, &opts)?;
            (run.probe_ms.unwrap_or(run.until_first_query_ms), out, None)
        };
        let secs_to_90 = seconds_to_reach(&out.intervals, 0.9 * source_tps);
        say(&format!(
            "  90% of {source_tps:.0} tps after {secs_to_90:?} s of load"
        ));
        self.settle()?;
        Ok(WarmupResult {
            method: method.to_string(),
            source_tps,
            first_query_ms,
            secs_to_90,
            tps_series: out.intervals.iter().map(|s| s.tps).collect(),
            sharing,
        })
    }

    fn sharing_counters(&self, replica: &str) -> Result<SharingCounters> {
        let r = self.dbfork.status(replica)?;
        let s = self.dbfork.status(SOURCE)?;
        let n = |v: &serde_json::Value, k: &str| v["sharing"][k].as_u64().unwrap_or(0);
        Ok(SharingCounters {
            replica_shared: n(&r, "shared"),
            replica_lookup_misses: n(&r, "lookup_misses"),
            replica_sharing_off: r["sharing"]["sharing_off_reason"]
                .as_str()
                .map(str::to_string),
            source_frames_revalidated: n(&s, "frames_revalidated"),
            source_scan_frames_pooled: n(&s, "scan_frames_pooled"),
            source_frames_moved: n(&s, "frames_moved"),
            source_pool_full_drops: n(&s, "pool_full_drops"),
        })
    }

    /// Flushes the source's dirty pages so every clone starts from the same kind
    /// of state (crash recovery work then does not depend on what ran before).
    fn settle(&self) -> Result<()> {
        let s = &self.source;
        s.exec("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001")?;
        s.exec("SET GLOBAL innodb_max_dirty_pages_pct = 0")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let res = loop {
            let dirty: u64 = s
                .query_scalar(
                    "SELECT variable_value FROM information_schema.global_status \
                     WHERE variable_name = 'INNODB_BUFFER_POOL_PAGES_DIRTY'",
                )?
                .unwrap_or(0);
            if dirty == 0 {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(anyhow::anyhow!(
                    "source still has {dirty} dirty pages after 120 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        s.exec("SET GLOBAL innodb_max_dirty_pages_pct = 90")?;
        s.exec("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0")?;
        res
    }
}

/// What a throughput run holds on to until its load has finished.
#[allow(dead_code)] // the values are held for their Drop only
enum Keep<'a> {
    Dbfork(ReplicaGuard<'a>),
    Native(Box<NativeReplica>),
}

/// A read of user data, not just `SELECT 1`: the page must come off the clone.
fn first_query_sql() -> String {
    format!("SELECT k FROM {DB}.sbtest1 WHERE id = 1")
}

/// Writes back and evicts the host's page cache, so a clone reads from the disk as
/// it would for a database larger than memory. Affects the whole host (no
/// correctness effect on anyone, only speed).
fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("dropping the page cache (needs root; or pass --cold-runs 0)")
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn du_bytes(path: &std::path::Path) -> u64 {
    std::process::Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn say(s: &str) {
    eprintln!("clonebench: {s}");
}

/// `4x250000` -> (4, 250000).
pub fn parse_size(s: &str) -> Result<(u32, u64)> {
    let Some((t, r)) = s.split_once(['x', 'X']) else {
        bail!("dataset {s:?}: expected TABLESxROWS, e.g. 4x250000");
    };
    let tables: u32 = t
        .trim()
        .parse()
        .with_context(|| format!("dataset {s:?}: tables"))?;
    let rows: u64 = r
        .trim()
        .parse()
        .with_context(|| format!("dataset {s:?}: rows"))?;
    if tables == 0 || rows == 0 {
        bail!("dataset {s:?}: tables and rows must be positive");
    }
    Ok((tables, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_sizes_parse_and_reject_garbage() {
        assert_eq!(parse_size("4x250000").unwrap(), (4, 250000));
        assert_eq!(parse_size(" 8 X 10 ").unwrap(), (8, 10));
        for bad in ["", "4", "x10", "4x", "0x10", "4x0", "ax1", "4x-1", "4x1x2"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
