//! The per-second observer: each instance's PSS and, for dbfork replicas, volume
//! hydration and sharing counters, appended to CSV rows until stopped.

use crate::csv::row;
use crate::parse::pss_bytes;
use experiments_support::Dbfork;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Shared<T> = Arc<std::sync::Mutex<T>>;

#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub pid_file: PathBuf,
    /// Asked `dbfork status` for hydration when set.
    pub dbfork_replica: bool,
}

/// Latest volume figures of a replica (for the per-replica summary).
#[derive(Clone, Debug, Default)]
pub struct VolumeFigures {
    pub on_demand_bytes: u64,
    pub background_bytes: u64,
    pub hydrated_bytes: u64,
    pub size: u64,
    pub shared_pages: u64,
    /// Bytes actually copied from the origin (regions it holds; the rest of a fresh
    /// volume is zeroes and hydrates without copying).
    pub copied_bytes: u64,
}

pub struct Sampler {
    pub targets: Shared<Vec<Target>>,
    pub memory_rows: Shared<Vec<String>>,
    pub hydration_rows: Shared<Vec<String>>,
    pub volumes: Shared<std::collections::BTreeMap<String, VolumeFigures>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(t0: Instant, prefix: Vec<String>, dbfork: Option<Dbfork>) -> Sampler {
        let targets: Shared<Vec<Target>> = Default::default();
        let memory_rows: Shared<Vec<String>> = Default::default();
        let hydration_rows: Shared<Vec<String>> = Default::default();
        let volumes: Shared<std::collections::BTreeMap<String, VolumeFigures>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (tg, mr, hr, vo, st) = (
            targets.clone(),
            memory_rows.clone(),
            hydration_rows.clone(),
            volumes.clone(),
            stop.clone(),
        );
        let handle = std::thread::spawn(move || {
            let mut tick: u64 = 0;
            while !st.load(Ordering::Relaxed) {
                let due = t0 + Duration::from_secs(tick);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let t = t0.elapsed().as_secs_f64();
                let list = tg.lock().unwrap().clone();
                for target in &list {
                    let pss = pid_of(&target.pid_file)
                        .and_then(|p| {
                            std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()
                        })
                        .and_then(|s| pss_bytes(&s));
                    if let Some(pss) = pss {
                        let mut f = prefix.clone();
                        f.extend([format!("{t:.1}"), target.name.clone(), pss.to_string()]);
                        mr.lock().unwrap().push(row(&f));
                    }
                    // Status costs a process; every other second is enough for a curve.
                    if target.dbfork_replica && tick % 2 == 0 {
                        if let Some(d) = &dbfork {
                            if let Ok(v) = d.status(&target.name) {
                                let fig = volume_figures(&v);
                                let mut f = prefix.clone();
                                f.extend([
                                    format!("{t:.1}"),
                                    target.name.clone(),
                                    fig.hydrated_bytes.to_string(),
                                    fig.size.to_string(),
                                    fig.on_demand_bytes.to_string(),
                                    fig.background_bytes.to_string(),
                                    fig.shared_pages.to_string(),
                                    fig.copied_bytes.to_string(),
                                ]);
                                hr.lock().unwrap().push(row(&f));
                                vo.lock().unwrap().insert(target.name.clone(), fig);
                            }
                        }
                    }
                }
                // After a stall (a slow status call) skip the missed ticks instead
                // of sampling them all at once.
                tick = (tick + 1).max(t0.elapsed().as_secs() + 1);
            }
        });
        Sampler {
            targets,
            memory_rows,
            hydration_rows,
            volumes,
            stop,
            handle: Some(handle),
        }
    }

    pub fn add(&self, t: Target) {
        self.targets.lock().unwrap().push(t);
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// On-demand vs background bytes are fetch counts times the region size (each
/// fetch hydrates one region).
pub fn volume_figures(status: &Value) -> VolumeFigures {
    let v = &status["volume"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let region = n(&v["region_size"]);
    VolumeFigures {
        on_demand_bytes: n(&v["on_demand_fetches"]) * region,
        background_bytes: n(&v["background_fetches"]) * region,
        hydrated_bytes: n(&v["hydrated_bytes"]),
        size: n(&v["size"]),
        shared_pages: n(&status["sharing"]["shared"]),
        copied_bytes: n(&v["fetched_bytes"]),
    }
}

/// Pid of a server from its pid file.
fn pid_of(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_figures_from_status() {
        let v = serde_json::json!({
            "volume": {"region_size": 1048576, "on_demand_fetches": 3, "background_fetches": 10,
                       "hydrated_bytes": 13631488, "size": 4294967296u64, "fetched_bytes": 65536},
            "sharing": {"shared": 42}
        });
        let f = volume_figures(&v);
        assert_eq!(f.on_demand_bytes, 3 << 20);
        assert_eq!(f.background_bytes, 10 << 20);
        assert_eq!(f.shared_pages, 42);
        assert_eq!(f.size, 4 << 30);
        assert_eq!(f.copied_bytes, 65536);
        let none = volume_figures(&Value::Null);
        assert_eq!(none.hydrated_bytes, 0);
    }
}
