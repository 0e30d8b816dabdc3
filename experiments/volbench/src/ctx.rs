//! What every scenario shares: the work directory, the dbfork store, the plan.

use crate::dbfork::Volumes;
use std::path::{Path, PathBuf};

/// Sizes and counts of one run (`--quick` shrinks them).
#[derive(Clone, Debug)]
pub struct Plan {
    /// Image sizes for time to first read.
    pub ttfr_sizes: Vec<u64>,
    /// Repetitions of each time-to-first-read measurement (medians reported).
    pub ttfr_reps: usize,
    /// Repetitions of each hydration measurement (medians reported).
    pub hydration_reps: usize,
    /// Rounds of latency measurements (fresh clones, new offsets; samples pooled).
    pub latency_rounds: usize,
    /// The dense (all random) image for latency and hydration.
    pub dense_size: u64,
    /// QD1 random reads per latency measurement.
    pub reads: usize,
    /// Region sizes compared (the engine default among them).
    pub region_sizes: Vec<u64>,
}

pub struct Ctx {
    pub dir: PathBuf,
    pub db: Volumes,
    pub plan: Plan,
    /// Whether dropping the page cache worked (root); said in the report.
    pub caches_dropped: bool,
}

impl Ctx {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
