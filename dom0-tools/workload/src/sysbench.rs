//! Driving sysbench's OLTP tests against an instance and parsing what it prints.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use dbinstance::sql::quote_ident;
use dbinstance::tools::{run as run_tool, tail_lines};
use dbinstance::{Error, Instance, Result};
use serde::{Deserialize, Serialize};

const PACKAGE: &str = "sysbench";

/// Which dataset and load. `test` is a bundled script name such as
/// "oltp_read_only", "oltp_read_write", "oltp_write_only", "oltp_point_select".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysbenchOptions {
    pub test: String,
    pub db: String,
    pub tables: u32,
    pub table_size: u64,
    pub threads: u32,
    pub secs: u32,
    /// Seconds between interval lines; 0 for none.
    pub report_interval: u32,
    pub extra_args: Vec<String>,
    pub binary: PathBuf,
}

impl Default for SysbenchOptions {
    fn default() -> Self {
        SysbenchOptions {
            test: "oltp_read_only".into(),
            db: "sbtest".into(),
            tables: 4,
            table_size: 10_000,
            threads: 2,
            secs: 10,
            report_interval: 1,
            extra_args: Vec::new(),
            binary: PathBuf::from("sysbench"),
        }
    }
}

/// One `--report-interval` line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalSample {
    /// Seconds since the run started.
    pub t_secs: u32,
    pub threads: u32,
    pub tps: f64,
    pub qps: f64,
    /// 0 when sysbench printed none for the interval.
    pub latency_p95_ms: f64,
    pub errors_per_sec: f64,
}

/// The summary of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SysbenchResult {
    pub transactions: u64,
    pub tps: f64,
    pub queries: u64,
    pub qps: f64,
    pub ignored_errors: u64,
    pub total_time_secs: f64,
    pub latency_avg_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_max_ms: f64,
    pub intervals: Vec<IntervalSample>,
}

fn base_command(instance: &Instance, opts: &SysbenchOptions) -> Command {
    let mut cmd = Command::new(&opts.binary);
    cmd.arg(&opts.test)
        .arg("--db-driver=mysql")
        .arg(format!(
            "--mysql-socket={}",
            instance.config().socket_path().display()
        ))
        .arg("--mysql-user=root")
        .arg(format!("--mysql-db={}", opts.db))
        .arg(format!("--tables={}", opts.tables))
        .arg(format!("--table-size={}", opts.table_size))
        .stdin(Stdio::null());
    cmd
}

/// Creates the database (if missing) and the sysbench tables.
pub fn prepare(instance: &Instance, opts: &SysbenchOptions) -> Result<()> {
    instance.exec(&format!(
        "CREATE DATABASE IF NOT EXISTS {}",
        quote_ident(&opts.db)
    ))?;
    let mut cmd = base_command(instance, opts);
    cmd.arg(format!(
        "--threads={}",
        opts.threads.clamp(1, opts.tables.max(1))
    ))
    .arg("prepare");
    run_tool(
        &mut cmd,
        &format!("sysbench {} prepare", opts.test),
        PACKAGE,
        None,
    )?;
    Ok(())
}

/// Runs the load to completion and parses the result.
pub fn run(instance: &Instance, opts: &SysbenchOptions) -> Result<SysbenchResult> {
    start(instance, opts)?.wait()
}

/// Starts the load in the background (e.g. to measure a source while it is cloned).
pub fn start(instance: &Instance, opts: &SysbenchOptions) -> Result<RunningSysbench> {
    let mut cmd = base_command(instance, opts);
    cmd.arg(format!("--threads={}", opts.threads))
        .arg(format!("--time={}", opts.secs))
        .arg(format!("--report-interval={}", opts.report_interval))
        .arg("--percentile=95")
        .args(&opts.extra_args)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ToolMissing {
            tool: opts.binary.display().to_string(),
            package: PACKAGE,
        },
        _ => Error::io(&opts.binary, e),
    })?;
    Ok(RunningSysbench {
        child: Some(child),
        what: format!("sysbench {} run", opts.test),
    })
}

/// A sysbench run in progress; killed if dropped before `wait`.
pub struct RunningSysbench {
    child: Option<Child>,
    what: String,
}

impl RunningSysbench {
    pub fn wait(mut self) -> Result<SysbenchResult> {
        let child = self.child.take().expect("child present until wait");
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("sysbench", e))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let mut text = stdout.into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            return Err(Error::CommandFailed {
                what: self.what.clone(),
                status: out.status.to_string(),
                output_tail: tail_lines(&text, 30),
            });
        }
        parse_output(&stdout)
    }
}

impl Drop for RunningSysbench {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Parses sysbench 1.0 `run` output (interval lines and the final summary).
pub fn parse_output(text: &str) -> Result<SysbenchResult> {
    let bad = |detail: String| Error::Parse {
        what: "sysbench output".into(),
        detail,
    };
    let mut intervals = Vec::new();
    let mut res = SysbenchResult {
        transactions: 0,
        tps: f64::NAN,
        queries: 0,
        qps: f64::NAN,
        ignored_errors: 0,
        total_time_secs: f64::NAN,
        latency_avg_ms: f64::NAN,
        latency_p95_ms: f64::NAN,
        latency_max_ms: f64::NAN,
        intervals: Vec::new(),
    };
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            if let Some(s) = parse_interval(l) {
                intervals.push(s);
            }
        } else if let Some(rest) = l.strip_prefix("transactions:") {
            let (n, rate) =
                count_and_rate(rest).ok_or_else(|| bad(format!("transactions line {l:?}")))?;
            res.transactions = n;
            res.tps = rate;
        } else if let Some(rest) = l.strip_prefix("queries:") {
            let (n, rate) =
                count_and_rate(rest).ok_or_else(|| bad(format!("queries line {l:?}")))?;
            res.queries = n;
            res.qps = rate;
        } else if let Some(rest) = l.strip_prefix("ignored errors:") {
            res.ignored_errors = count_and_rate(rest).map(|c| c.0).unwrap_or(0);
        } else if let Some(rest) = l.strip_prefix("total time:") {
            res.total_time_secs = rest
                .trim()
                .trim_end_matches('s')
                .parse()
                .unwrap_or(f64::NAN);
        } else if let Some(rest) = l.strip_prefix("avg:") {
            res.latency_avg_ms = rest.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(rest) = l.strip_prefix("max:") {
            res.latency_max_ms = rest.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(rest) = l.strip_prefix("95th percentile:") {
            res.latency_p95_ms = rest.trim().parse().unwrap_or(f64::NAN);
        }
    }
    if res.tps.is_nan() || res.qps.is_nan() {
        return Err(bad(format!(
            "no transactions/queries summary in:\n{}",
            tail_lines(text, 15)
        )));
    }
    res.intervals = intervals;
    Ok(res)
}

/// "   1739   (173.78 per sec.)"
fn count_and_rate(rest: &str) -> Option<(u64, f64)> {
    let rest = rest.trim();
    let (n, tail) = rest.split_once('(')?;
    let rate = tail.split_whitespace().next()?.parse().ok()?;
    Some((n.trim().parse().ok()?, rate))
}

/// "[ 1s ] thds: 2 tps: 123.45 qps: 2469.90 (r/w/o: ...) lat (ms,95%): 20.00 err/s: 0.00 reconn/s: 0.00"
fn parse_interval(l: &str) -> Option<IntervalSample> {
    let (head, rest) = l.strip_prefix('[')?.split_once(']')?;
    let t_secs = head.trim().trim_end_matches('s').parse().ok()?;
    let after = |key: &str| -> Option<&str> {
        let i = rest.find(key)?;
        rest[i + key.len()..].split_whitespace().next()
    };
    Some(IntervalSample {
        t_secs,
        threads: after("thds:")?.parse().ok()?,
        tps: after("tps:")?.parse().ok()?,
        qps: after("qps:")?.parse().ok()?,
        latency_p95_ms: after("lat (ms,95%):")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        errors_per_sec: after("err/s:").and_then(|v| v.parse().ok()).unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)

Running the test with following options:
Number of threads: 2
Report intermediate results every 1 second(s)

Initializing worker threads...

Threads started!

[ 1s ] thds: 2 tps: 123.45 qps: 2469.90 (r/w/o: 1728.93/493.98/246.99) lat (ms,95%): 20.00 err/s: 0.00 reconn/s: 0.00
[ 2s ] thds: 2 tps: 130.00 qps: 2600.00 (r/w/o: 1820.00/520.00/260.00) lat (ms,95%): 18.28 err/s: 0.00 reconn/s: 0.00
SQL statistics:
    queries performed:
        read:                            24346
        write:                           0
        other:                           3478
        total:                           27824
    transactions:                        1739   (173.78 per sec.)
    queries:                             27824  (2780.42 per sec.)
    ignored errors:                      0      (0.00 per sec.)
    reconnects:                          0      (0.00 per sec.)

General statistics:
    total time:                          10.0056s
    total number of events:              1739

Latency (ms):
         min:                                    4.31
         avg:                                   11.50
         max:                                   37.93
         95th percentile:                       17.01
         sum:                                19997.66
";

    #[test]
    fn parses_summary_and_intervals() {
        let r = parse_output(SAMPLE).unwrap();
        assert_eq!(r.transactions, 1739);
        assert_eq!(r.tps, 173.78);
        assert_eq!(r.queries, 27824);
        assert_eq!(r.qps, 2780.42);
        assert_eq!(r.latency_p95_ms, 17.01);
        assert_eq!(r.latency_avg_ms, 11.50);
        assert_eq!(r.latency_max_ms, 37.93);
        assert_eq!(r.total_time_secs, 10.0056);
        assert_eq!(r.intervals.len(), 2);
        assert_eq!(r.intervals[1].t_secs, 2);
        assert_eq!(r.intervals[1].tps, 130.0);
        assert_eq!(r.intervals[1].latency_p95_ms, 18.28);
        assert_eq!(r.intervals[0].threads, 2);
    }

    #[test]
    fn missing_summary_is_an_error() {
        let err = parse_output("FATAL: unable to connect\n").unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
    }

    #[test]
    fn missing_binary_names_package() {
        let opts = SysbenchOptions {
            binary: "/nonexistent/sysbench".into(),
            ..SysbenchOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let cfg = dbinstance::InstanceConfig::in_dir("x", dir.path(), 1, 1);
        let inst = Instance::open(cfg).unwrap();
        match start(&inst, &opts) {
            Err(Error::ToolMissing { package, .. }) => assert_eq!(package, "sysbench"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("started a missing binary"),
        }
    }

    proptest! {
        #[test]
        fn random_text_never_panics(s in "(\\[ ?[0-9]{0,3}s? ?\\]|transactions:|queries:|[ -~]{0,40}|\n){0,30}") {
            let _ = parse_output(&s);
        }
    }
}
